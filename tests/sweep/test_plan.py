"""study.sweep.plan: the study's name, metric, devices, workers and definition, checked before
anything is written."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from omegaconf import DictConfig, OmegaConf

from helpers import TINY
from study.errors import UserError
from study.sweep.definition import check_same_study, encode, study_definition
from study.sweep.devices import DeviceSlot
from study.sweep.plan import AUTO_PACK, WORKERS_PER_PLACE, SweepPlan, pack_size, packed_engine
from study.sweep.pool import worker_imports
from study.sweep.space import Param
from study.sweep.spec import WORKER_MODULE

CORES = os.cpu_count() or 1
MakePlan = Callable[..., SweepPlan]


@pytest.fixture
def no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def test_the_default_study_name_is_the_data_and_the_model(make_plan: MakePlan) -> None:
    assert make_plan().settings.study_name == "lecture-classifier"
    plan = make_plan("data=diabetes", "model=regressor")
    assert plan.settings.study_name == "diabetes-regressor"
    assert plan.settings.storage_url.endswith("study.journal")


@pytest.mark.parametrize(
    "name", ["", "../../../tmp/x", "a/b", "..", ".hidden", "a b", "x" * 65, "é", "a..b"]
)
def test_an_unsafe_study_name_is_refused(make_plan: MakePlan, name: str) -> None:
    with pytest.raises(UserError, match=r"sweep.study_name=.* is not allowed"):
        make_plan(f"sweep.study_name='{name}'")


def test_a_safe_study_name_is_kept(make_plan: MakePlan) -> None:
    assert make_plan("sweep.study_name=Lr_sweep-2.v1").settings.study_name == "Lr_sweep-2.v1"


def test_a_metric_the_model_never_logs_is_refused(make_plan: MakePlan) -> None:
    with pytest.raises(UserError) as caught:
        make_plan("sweep.metric=val/r2")
    assert str(caught.value).startswith("sweep.metric='val/r2' is never logged by this model")


def test_a_metric_the_model_logs_is_accepted(make_plan: MakePlan) -> None:
    plan = make_plan("data=diabetes", "model=regressor", "sweep.metric=val/r2")
    assert plan.settings.metric == "val/r2"


def test_a_metric_one_searched_model_never_logs_is_refused(make_plan: MakePlan) -> None:
    with pytest.raises(UserError, match=r"model=regressor is unusable.*val/acc"):
        make_plan("sweep.metric=val/acc", "+search.model={type:categorical,choices:[regressor]}")


def test_devices_that_are_not_visible_are_refused(
    make_plan: MakePlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(
        UserError, match=r"GPU 7, which is not visible here: visible GPUs are 0, 1"
    ):
        make_plan("sweep.devices=[0,7]")


def test_visible_devices_give_one_worker_per_gpu_slot(
    make_plan: MakePlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    plan = make_plan("sweep.devices=[0,1]", "sweep.trials_per_gpu=2")
    assert [slot.device for slot in plan.slots] == ["0", "1", "0", "1"]
    assert plan.workers_note == ""


@pytest.mark.usefixtures("no_gpus")
def test_workers_are_capped_at_the_number_of_trials(make_plan: MakePlan) -> None:
    plan = make_plan("sweep.workers=1000", "sweep.n_trials=3")
    assert len(plan.slots) == 3
    assert plan.workers_note == " (sweep.workers=1000 capped: 3 trials)"


@pytest.mark.usefixtures("no_gpus")
def test_workers_are_capped_at_a_few_per_core(make_plan: MakePlan) -> None:
    plan = make_plan("sweep.workers=1000", "sweep.n_trials=100000")
    assert len(plan.slots) == WORKERS_PER_PLACE * CORES
    assert plan.workers_note == f" (sweep.workers=1000 capped: {WORKERS_PER_PLACE} per core)"


def test_workers_are_capped_at_a_few_per_gpu_slot(
    make_plan: MakePlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    plan = make_plan("sweep.workers=1000", "sweep.n_trials=100000", "sweep.trials_per_gpu=3")
    assert len(plan.slots) == WORKERS_PER_PLACE * 2 * 3
    assert "per GPU slot" in plan.workers_note


@pytest.mark.usefixtures("no_gpus")
def test_a_resumed_plan_runs_no_more_workers_than_trials_left(make_plan: MakePlan) -> None:
    plan = make_plan("sweep.workers=2", "sweep.n_trials=10")
    assert plan.capped_to(10) is plan
    resumed = plan.capped_to(1)
    assert len(resumed.slots) == 1
    assert resumed.workers_note == " (sweep.workers capped: 1 trials left)"


@pytest.mark.usefixtures("no_gpus")
def test_trials_in_flight_are_the_workers_packs_and_follow_a_capped_plan(
    make_plan: MakePlan,
) -> None:
    plan = make_plan("sweep.workers=2", "sweep.pack=3", "sweep.n_trials=10")
    assert plan.in_flight == 6  # what the median pruner waits for (study.sweep.backends)
    assert plan.capped_to(4).in_flight == 4  # two workers, packs of two
    last = plan.capped_to(1)  # one worker, still packed: a pack of one is another engine
    assert (len(last.slots), last.settings.pack) == (1, 2)


@pytest.mark.usefixtures("no_gpus")
def test_a_pack_larger_than_the_study_is_capped_and_says_so(make_plan: MakePlan) -> None:
    plan = make_plan("sweep.workers=2", "sweep.pack=1000", "sweep.n_trials=8")
    assert (plan.settings.pack, plan.in_flight) == (4, 8)
    assert plan.pack_note == " (sweep.pack=1000 capped: 8 trials for 2 workers)"
    resumed = plan.capped_to(3)  # packs of two at least (the packed engine), on fewer workers
    assert (resumed.settings.pack, len(resumed.slots)) == (2, 1)
    assert resumed.pack_note == " (sweep.pack=4 capped: 3 trials left for 2 workers)"
    assert resumed.workers_note == " (sweep.workers capped: 3 trials left in packs of 2)"


def test_a_folder_as_storage_is_refused(make_plan: MakePlan, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"sweep.storage=.* is a folder"):
        make_plan(f"sweep.storage={tmp_path}")


# --- the study's definition ---------------------------------------------------------------


def _differs(before: SweepPlan, after: SweepPlan) -> str:
    """The error of resuming `before`'s study with `after`'s plan ("" if the same study)."""
    try:
        check_same_study("s", encode(before.definition), after.definition)
    except UserError as error:
        return str(error)
    return ""


def test_run_settings_may_change_between_sessions(make_plan: MakePlan) -> None:
    before = make_plan(*TINY)
    after = make_plan(
        *TINY,
        "sweep.n_trials=50",
        "sweep.workers=2",
        "sweep.seed=7",
        "sweep.sampler=random",
        "sweep.max_failures=9",
        "sweep.retries=0",
        "sweep.heartbeat_s=3",
        "sweep.threads_per_worker=2",
        "sweep.study_name=other",
        "tracking.uri=sqlite:///elsewhere.db",
        "trainer.progress_bar=true",
        "trainer.accelerator=cpu",
    )
    assert _differs(before, after) == ""


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        (["data=breast_cancer"], "data=lecture, this command has data=breast_cancer"),
        (["search=wide"], "search=default, this command has search=wide"),
        (["sweep.metric=val/acc"], "sweep.metric=val/loss, this command has sweep.metric=val/acc"),
        (["sweep.direction=maximize"], "sweep.direction=minimize, this command has"),
        (["model.hidden_sizes=[9]"], "model.hidden_sizes=[8], this command has"),
        (["seed=3"], "seed=0, this command has seed=3"),
        (["trainer.max_epochs=3"], "trainer.max_epochs=4, this command has"),
    ],
)
def test_what_defines_a_study_is_named_when_it_changes(
    make_plan: MakePlan, change: list[str], shown: str
) -> None:
    before = make_plan(*TINY)
    tiny = [o for o in TINY if not (change[0].startswith("data=") and "n_samples" in o)]
    error = _differs(before, make_plan(*tiny, *change))
    assert shown in error
    assert "sweep.study_name=" in error and "higher sweep.n_trials" in error


def test_a_changed_search_range_is_named() -> None:
    base = OmegaConf.create({"seed": 0})
    narrower = Param("optimizer.lr", Distributions.FloatDistribution(1e-4, 1e-2, log=True), False)
    before = study_definition(base, [LR, DROPOUT], "val/loss", "minimize", {"search": "default"})
    after = study_definition(
        base, [narrower, DROPOUT], "val/loss", "minimize", {"search": "default"}
    )
    with pytest.raises(UserError, match=r"created with search.optimizer.lr=\{.*\"high\": 0.1"):
        check_same_study("s", encode(before), after)


@pytest.mark.parametrize("side", ["recorded", "this command"])
def test_a_key_on_one_side_only_is_named(side: str) -> None:
    base = OmegaConf.create({"seed": 0})
    fewer = study_definition(base, [LR], "val/loss", "minimize", {})
    more = study_definition(base, [LR, DROPOUT], "val/loss", "minimize", {})
    recorded, now = (more, fewer) if side == "recorded" else (fewer, more)
    shown = (
        r"created with search.model.dropout=\{.*\}, this command has search.model.dropout=<unset>"
        if side == "recorded"
        else r"created with search.model.dropout=<unset>, this command has search.model.dropout=\{"
    )
    with pytest.raises(UserError, match=shown):
        check_same_study("s", encode(recorded), now)


def test_a_csv_is_defined_by_its_bytes_not_its_path(make_plan: MakePlan, tmp_path: Path) -> None:
    rows = "a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(30))
    for name in ("here.csv", "moved.csv"):
        (tmp_path / name).write_text(rows)
    (tmp_path / "edited.csv").write_text(rows + "30,1\n")

    def plan(name: str) -> SweepPlan:
        return make_plan("data=csv", "data.target=y", f"data.path={tmp_path / name}")

    here = plan("here.csv")
    assert _differs(here, plan("moved.csv")) == ""
    assert "data.sha256=" in _differs(here, plan("edited.csv"))


# --- sweep.pack: how many trials a worker packs ----------------------------------------

Distributions = optuna.distributions
LR = Param("optimizer.lr", Distributions.FloatDistribution(1e-4, 1e-1, log=True), False)
BATCH = Param("data.batch_size", Distributions.CategoricalDistribution([16, 128]), False)
DROPOUT = Param("model.dropout", Distributions.FloatDistribution(0.0, 0.5), False)
WIDTH = Param("model.hidden_sizes", Distributions.CategoricalDistribution(["[8]", "[64]"]), False)
OPTIMIZER = Param("optimizer", Distributions.CategoricalDistribution(["adam", "sgd"]), True)
CPU2 = [DeviceSlot(0, None), DeviceSlot(1, None)]
GPU1 = [DeviceSlot(0, "0")]


def _cfg(hidden_sizes: list[int] | None = None) -> DictConfig:
    return OmegaConf.create({"model": {"hidden_sizes": hidden_sizes or [32, 32]}})


def test_auto_packs_a_twelfth_of_the_study_spread_over_the_workers() -> None:
    assert pack_size("auto", _cfg(), [LR, BATCH, DROPOUT], 100, CPU2) == 5
    assert pack_size("auto", _cfg(), [LR, BATCH, DROPOUT], 30, CPU2) == 2
    assert pack_size("auto", _cfg(), [LR, BATCH, DROPOUT], 4, CPU2) == 1


def test_auto_is_capped_per_device_and_lower_for_wide_layers() -> None:
    assert pack_size("auto", _cfg(), [LR], 10_000, CPU2) == AUTO_PACK["cpu"]
    assert pack_size("auto", _cfg(), [LR], 10_000, GPU1) == AUTO_PACK["gpu"]
    assert pack_size("auto", _cfg([256, 256]), [LR], 10_000, CPU2) == AUTO_PACK["cpu"] // 8


def test_a_time_budget_quarters_the_cap_not_a_small_studys_pack() -> None:
    # Under sweep.timeout the trials in flight at its end finish after it: fewer end sooner.
    assert pack_size("auto", _cfg(), [LR], 10_000, CPU2, budgeted=True) == AUTO_PACK["cpu"] // 4
    assert pack_size("auto", _cfg(), [LR], 10_000, GPU1, budgeted=True) == AUTO_PACK["gpu"] // 4
    assert pack_size("auto", _cfg(), [LR], 100, CPU2, budgeted=True) == 5
    assert pack_size(32, _cfg(), [LR], 10_000, CPU2, budgeted=True) == 32  # asked for


@pytest.mark.usefixtures("no_gpus")
def test_a_budgeted_study_packs_a_quarter_of_the_cap(make_plan: MakePlan) -> None:
    plan = make_plan("sweep.workers=2", "sweep.n_trials=10000", "sweep.timeout=60")
    assert plan.settings.pack == AUTO_PACK["cpu"] // 4
    assert make_plan("sweep.workers=2", "sweep.n_trials=10000").settings.pack == AUTO_PACK["cpu"]


@pytest.mark.parametrize("param", [WIDTH, OPTIMIZER])
def test_auto_is_one_when_the_search_changes_what_a_pack_shares(param: Param) -> None:
    assert pack_size("auto", _cfg(), [LR, param], 64, CPU2) == 1


@pytest.mark.parametrize(
    ("setting", "params", "packed"),
    [
        ("auto", [LR, BATCH, DROPOUT], True),  # a study too small to pack: one at a time, packed
        ("auto", [LR, WIDTH], False),  # its members could not share a pack: Lightning
        (1, [LR, BATCH, DROPOUT], False),  # asked for: Lightning's one-at-a-time path
        (2, [LR], True),
    ],
)
def test_auto_trains_in_the_packed_engine_wherever_the_search_lets_it(
    setting: object, params: list[Param], packed: bool
) -> None:
    asked = pack_size(setting, _cfg(), params, 4, CPU2)
    assert packed_engine(setting, asked, params) is packed


@pytest.mark.usefixtures("no_gpus")
def test_a_small_auto_study_starts_its_workers_without_lightning(make_plan: MakePlan) -> None:
    plan = make_plan("sweep.workers=2", "sweep.n_trials=2")
    assert (plan.settings.pack, plan.settings.packed) == (1, True)
    imports = worker_imports(plan.settings.packed)
    assert WORKER_MODULE in imports and "study.train" not in imports  # no Lightning


def test_a_number_is_taken_as_it_is() -> None:
    assert pack_size(7, _cfg(), [LR, BATCH], 64, CPU2) == 7
    assert pack_size(1, _cfg(), [LR, WIDTH], 64, CPU2) == 1


def test_a_pack_of_trials_that_cannot_share_it_is_refused_naming_the_path() -> None:
    with pytest.raises(UserError, match=r"sweep.pack=4: trials that search model.hidden_sizes"):
        pack_size(4, _cfg(), [LR, WIDTH], 64, CPU2)


@pytest.mark.parametrize("setting", [0, -1, 2.5, "many", True])
def test_a_pack_size_that_is_not_auto_or_a_positive_integer_is_refused(setting: object) -> None:
    with pytest.raises(UserError, match=r"sweep.pack=.* is out of range"):
        pack_size(setting, _cfg(), [LR], 64, CPU2)


def test_text_class_labels_reach_every_trials_config(make_plan: MakePlan, tmp_path: Path) -> None:
    rows = "".join(f"{i},{i % 7},{'yes' if i % 3 else 'no'}\n" for i in range(60))
    (tmp_path / "answers.csv").write_text(f"a,b,answer\n{rows}")
    plan = make_plan("data=csv", f"data.path={tmp_path / 'answers.csv'}", "data.target=answer")
    assert list(plan.base_config.data.classes) == ["no", "yes"]  # what workers build trials from
    assert plan.definition["data.classes"] == ["no", "yes"]


def test_bad_data_is_refused_by_the_plan_before_anything_is_written(
    make_plan: MakePlan, tmp_path: Path
) -> None:
    (tmp_path / "gap.csv").write_text("a,b,y\n1,2,0\n3,,1\n")
    with pytest.raises(UserError, match=r"'b' of gap\.csv has a missing value on line 3"):
        make_plan("data=csv", f"data.path={tmp_path / 'gap.csv'}", "data.target=y")
    assert not (tmp_path / "study.journal").exists() and not (tmp_path / "sweep").exists()


def test_the_first_line_names_the_study_its_trials_budget_and_devices(
    make_plan: MakePlan, no_gpus: None
) -> None:
    plan = make_plan(*TINY, "sweep.study_name=s", "sweep.n_trials=7", "sweep.timeout=90")
    assert plan.first_line() == "study s: up to 7 trials within 90 s; starting on cpu"


@pytest.mark.parametrize("setting", ["true", "false"])
def test_the_fork_server_is_a_switch(make_plan: MakePlan, setting: str) -> None:
    assert make_plan(*TINY, f"sweep.fork_server={setting}").fork_server is (setting == "true")


def test_a_fork_server_setting_that_is_not_a_switch_is_refused(make_plan: MakePlan) -> None:
    with pytest.raises(UserError, match=r"^sweep.fork_server='maybe' is not allowed: use true"):
        make_plan(*TINY, "sweep.fork_server=maybe")


def test_a_key_new_to_the_configs_at_its_null_default_means_the_same_study() -> None:
    recorded = encode({"data": "csv", "seed": 0})
    check_same_study("s", recorded, {"data": "csv", "seed": 0, "data.classes": None})
    with pytest.raises(UserError, match=r"data\.classes=<unset>, this command has data\.classes"):
        check_same_study("s", recorded, {"data": "csv", "seed": 0, "data.classes": ["a", "b"]})

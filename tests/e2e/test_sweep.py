"""`python scripts/run.py -m sweep` as a user runs it: real studies, real worker processes, a real
Optuna journal and a real MLflow sqlite store, each private to the test in a temp dir.

Sweeps are expensive (~6 s per process start, ~6 s per worker), so one resumed study is shared by
the read-only checks, and processes that do not depend on each other run two at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sqlite3
import subprocess
import sys
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from helpers import all_runs, cli, one_error_line, server_command, wait_until_up
from study.sweep.backends import FINISHED, make_storage
from study.sweep.definition import DEFINITION_ATTR
from study.sweep.spec import WORKER_MODULE
from study.tracking import NOTE_TAG, Store
from study.ui import server_env

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "scripts" / "run.py"
REPRODUCE = ROOT / "scripts" / "reproduce.py"
PROBES = ROOT / "tests" / "probes"  # sitecustomize: what each process imported
TINY = ["data.n_samples=120", "model.hidden_sizes=[8]", "trainer.max_epochs=4"]
SEARCHED = ("optimizer.lr", "data.batch_size", "model.dropout")
PARENT_TAG = "mlflow.parentRunId"

pytestmark = pytest.mark.slow


def _script(
    script: Path, *args: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


@dataclass
class Sweep:
    """A study run by scripts/run.py -m sweep in its own folder, with its own stores."""

    work: Path
    name: str = "lecture-classifier"  # the default: the data and the model
    env: dict[str, str] = field(default_factory=dict)
    results: list[subprocess.CompletedProcess[str]] = field(default_factory=list)

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.work / 'mlruns' / 'mlflow.db'}"

    @property
    def storage(self) -> Path:
        return self.work / "study.journal"

    @property
    def sweep_dir(self) -> Path:
        return self.work / "sweep"

    def private(self) -> list[str]:
        return [
            f"tracking.uri={self.tracking_uri}",
            f"sweep.storage={self.storage}",
            f"hydra.sweep.dir={self.sweep_dir}",
        ]

    def run(
        self, *overrides: str, config_dir: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        flags = ["--config-dir", str(config_dir)] if config_dir else []
        result = _script(
            RUN, *flags, "-m", "sweep", *self.private(), *overrides, cwd=self.work, env=self.env
        )
        self.results.append(result)
        if check:
            assert result.returncode == 0, (result.stdout, result.stderr)
            assert "Traceback" not in result.stderr, result.stderr
        return result

    @property
    def stdout(self) -> str:
        return self.results[-1].stdout

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.name, storage=make_storage(str(self.storage)))

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.study().get_trials()

    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)

    def experiment_id(self) -> str:
        experiment = self.client().get_experiment_by_name(self.name)
        assert experiment is not None, f"no experiment {self.name!r}"
        return experiment.experiment_id

    def runs(self) -> list[Run]:
        return self.client().search_runs([self.experiment_id()], max_results=1000)

    def parents(self) -> list[Run]:
        return [run for run in self.runs() if PARENT_TAG not in run.data.tags]

    def children(self) -> dict[int, Run]:
        """Child runs by trial number (one each: asserted)."""
        children = [run for run in self.runs() if PARENT_TAG in run.data.tags]
        numbers = [int(run.data.tags["trial_number"]) for run in children]
        assert len(numbers) == len(set(numbers)), sorted(numbers)
        return dict(zip(numbers, children, strict=True))

    def curve(self, run_id: str, metric: str = "val/loss") -> list[int]:
        return sorted(m.step for m in self.client().get_metric_history(run_id, metric))


# --- one study, two sessions: 5 trials on 2 workers, then resumed to 7 ---------------------


@dataclass
class ResumedStudy:
    sweep: Sweep
    first_trials: list[optuna.trial.FrozenTrial]
    first_parent_ids: list[str]
    first_stdout: str


@pytest.fixture(scope="module")
def study_sweep(tmp_path_factory: pytest.TempPathFactory) -> ResumedStudy:
    work = tmp_path_factory.mktemp("study")
    (work / "imports").mkdir()
    sweep = Sweep(work, name="tiny", env=import_probe(work / "imports"))
    # Two packs of two trials: every guarantee below holds for trials trained side by side.
    command = ["sweep.study_name=tiny", "sweep.workers=2", "sweep.pack=2", *TINY]
    sweep.run(*command, "sweep.n_trials=5")
    first = ResumedStudy(
        sweep, sweep.trials(), [run.info.run_id for run in sweep.parents()], sweep.stdout
    )
    sweep.run(*command, "sweep.n_trials=7")
    return first


def import_probe(folder: Path) -> dict[str, str]:
    """Environment under which each process records what it imported (tests/probes)."""
    paths = [str(PROBES), os.environ.get("PYTHONPATH", "")]
    return {
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "STUDY_IMPORT_PROBE": str(folder),
    }


def test_packed_workers_train_and_track_trials_without_importing_lightning(
    study_sweep: ResumedStudy,
) -> None:
    """Lightning (with torchmetrics, scipy.signal and matplotlib) cost each worker ~5 s of its
    start: a packed worker trains and tracks its trials with none of it."""
    records = [json.loads(p.read_text()) for p in (study_sweep.sweep.work / "imports").iterdir()]
    workers = [r for r in records if WORKER_MODULE in r["argv"]]
    assert len(workers) >= 3  # two in the first session, one for the two trials of the second
    assert all(r["imported"] == [] for r in workers), workers


def test_parallel_workers_finish_exactly_n_trials(study_sweep: ResumedStudy) -> None:
    trials = study_sweep.first_trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state in FINISHED for t in trials), [t.state for t in trials]


def test_resume_continues_trial_numbers_until_the_new_n_trials_finished(
    study_sweep: ResumedStudy,
) -> None:
    trials = study_sweep.sweep.trials()
    assert [t.number for t in trials] == list(range(7))
    assert all(t.state in FINISHED for t in trials), [t.state for t in trials]
    # The first session's trials are kept as they were, not rerun.
    assert [t.params for t in trials[:5]] == [t.params for t in study_sweep.first_trials]
    assert "study tiny: 5/7 trials finished" in study_sweep.sweep.stdout


def test_resume_reuses_the_study_parent_run(study_sweep: ResumedStudy) -> None:
    parents = study_sweep.sweep.parents()
    assert [run.info.run_id for run in parents] == study_sweep.first_parent_ids
    [parent] = parents
    assert parent.info.run_name == "study tiny"
    assert parent.data.tags["study"] == "tiny"
    assert parent.info.status == "FINISHED"


# Resuming with a command that means another study: one error line, nothing written.
RESUME_CHANGES = {
    "data": (["data=breast_cancer"], "created with data=lecture, this command has data=breast"),
    "search space": (["search=wide"], "created with search=default, this command has search=wide"),
    "metric": (["sweep.metric=val/acc"], "this command has sweep.metric=val/acc"),
    "direction": (["sweep.direction=maximize"], "exists with direction minimize"),
    "storage": (["sweep.storage={work}/other.journal"], "is kept in sweep.storage="),
    "fewer trials": (["sweep.n_trials=3"], "has 7 finished trials, more than sweep.n_trials=3"),
}


@pytest.mark.parametrize("change", RESUME_CHANGES, ids=list(RESUME_CHANGES))
def test_resuming_with_a_command_that_means_another_study_is_refused(
    study_sweep: ResumedStudy, change: str
) -> None:
    sweep = study_sweep.sweep
    changed, fragment = RESUME_CHANGES[change]
    changed = [arg.format(work=sweep.work) for arg in changed]
    keys = {arg.split("=")[0] for arg in changed}
    command = [
        arg
        for arg in [*sweep.private(), "sweep.study_name=tiny", "sweep.workers=2", *TINY]
        if arg.split("=")[0] not in keys and not (keys == {"data"} and "n_samples" in arg)
    ]
    [parent] = sweep.parents()
    result = cli("run", "-m", "sweep", *command, *changed, cwd=sweep.work)
    line = one_error_line(result)
    assert fragment in line, line
    assert "sweep.study_name=" in line or change in ("direction", "fewer trials")
    assert len(sweep.trials()) == 7
    [again] = sweep.parents()
    assert (again.info.status, again.info.end_time) == (parent.info.status, parent.info.end_time)
    assert len(sweep.runs()) == 8  # the parent and its 7 trials
    assert not (sweep.work / "other.journal").exists()


def test_a_finished_study_says_so_without_workers_torch_or_mlflow(
    study_sweep: ResumedStudy, tmp_path: Path
) -> None:
    sweep = study_sweep.sweep
    command = ["sweep.study_name=tiny", "sweep.workers=2", "sweep.pack=2", *TINY]
    probe = {**import_probe(tmp_path), "STUDY_IMPORT_WATCH": "torch,mlflow"}
    result = _script(
        RUN,
        "-m",
        "sweep",
        *sweep.private(),
        *command,
        "sweep.n_trials=7",
        cwd=sweep.work,
        env=probe,
    )
    assert result.returncode == 0, result.stderr
    best = sweep.study().best_trial
    assert result.stdout.splitlines() == [
        f"study tiny: 7/7 trials finished, nothing to do; best value {best.value:.6g} "
        f"(trial {best.number}); raise sweep.n_trials to extend it"
    ]
    [record] = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]  # no worker
    assert record["imported"] == []


def test_a_changed_study_is_refused_before_torch_mlflow_or_workers(
    study_sweep: ResumedStudy, tmp_path: Path
) -> None:
    sweep = study_sweep.sweep
    command = ["sweep.study_name=tiny", "sweep.workers=2", *TINY, "sweep.n_trials=9"]
    probe = {**import_probe(tmp_path), "STUDY_IMPORT_WATCH": "torch,mlflow"}
    result = _script(
        RUN, "-m", "sweep", *sweep.private(), *command, "data.noise=3.0", cwd=sweep.work, env=probe
    )
    assert "created with data.noise=8.0, this command has data.noise=3.0" in one_error_line(result)
    [record] = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]  # no worker
    assert record["imported"] == []
    assert len(sweep.trials()) == 7


def test_the_first_line_names_the_study_its_workers_and_its_stores(
    study_sweep: ResumedStudy,
) -> None:
    sweep = study_sweep.sweep
    first, opened = study_sweep.first_stdout.splitlines()[:2]
    assert first == "study tiny: up to 5 trials; starting on cpu"  # before the slow imports
    assert opened.startswith("study tiny: 0/5 trials finished; 2 workers on cpu"), opened
    assert f"storage {sweep.storage}; MLflow {sweep.tracking_uri}" in opened


def test_the_study_is_an_experiment_named_after_it_in_the_model_training_view(
    study_sweep: ResumedStudy,
) -> None:
    client = study_sweep.sweep.client()
    experiment = client.get_experiment(study_sweep.sweep.experiment_id())
    assert experiment.name == "tiny"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_each_trial_of_both_sessions_has_one_child_run_under_the_parent(
    study_sweep: ResumedStudy,
) -> None:
    sweep = study_sweep.sweep
    [parent] = sweep.parents()
    children = sweep.children()
    assert sorted(children) == list(range(7))
    for trial in sweep.trials():
        child = children[trial.number]
        assert child.data.tags[PARENT_TAG] == parent.info.run_id
        assert child.info.run_id == trial.user_attrs["mlflow_run_id"]
        assert child.info.run_name == f"trial {trial.number}"
        assert child.info.status == "FINISHED"


def test_each_child_records_its_trial_state_and_device(study_sweep: ResumedStudy) -> None:
    sweep = study_sweep.sweep
    children = sweep.children()
    for trial in sweep.trials():
        tags = children[trial.number].data.tags
        assert tags["trial_state"] == trial.state.name
        assert tags["trial_state"] in ("COMPLETE", "PRUNED")
        assert tags["device"] == trial.user_attrs["device"]
        assert tags["device"]


def test_each_child_holds_its_whole_val_loss_curve_one_point_per_epoch(
    study_sweep: ResumedStudy,
) -> None:
    sweep = study_sweep.sweep
    children = sweep.children()
    for trial in sweep.trials():
        epochs = trial.user_attrs["epochs"]
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert epochs == 4  # max_epochs; patience 10 never stops a 4-epoch run early
        steps = sweep.curve(children[trial.number].info.run_id)
        assert steps == list(range(1, epochs + 1)), (trial.number, steps)


def test_each_child_logs_the_params_optuna_sampled(study_sweep: ResumedStudy) -> None:
    sweep = study_sweep.sweep
    children = sweep.children()
    for trial in sweep.trials():
        params = children[trial.number].data.params
        assert sorted(trial.params) == sorted(SEARCHED)
        for name in SEARCHED:
            assert float(params[name]) == trial.params[name], (trial.number, name)


def test_the_parent_run_carries_the_best_value_and_trial_counts(
    study_sweep: ResumedStudy,
) -> None:
    sweep = study_sweep.sweep
    [parent] = sweep.parents()
    trials = sweep.trials()
    metrics = parent.data.metrics
    count = {state: sum(t.state == state for t in trials) for state in optuna.trial.TrialState}
    assert metrics["trials_complete"] == count[optuna.trial.TrialState.COMPLETE]
    assert metrics["trials_pruned"] == count[optuna.trial.TrialState.PRUNED]
    assert metrics["trials_fail"] == 0
    assert metrics["trials_complete"] + metrics["trials_pruned"] == 7
    assert metrics["best_value"] == pytest.approx(sweep.study().best_value)


def test_the_parent_run_points_at_the_best_trials_child_run(study_sweep: ResumedStudy) -> None:
    sweep = study_sweep.sweep
    [parent] = sweep.parents()
    best = sweep.study().best_trial
    tags = parent.data.tags
    assert tags["best_run_id"] == sweep.children()[best.number].info.run_id
    assert tags["best_trial_number"] == str(best.number)
    for name in SEARCHED:
        assert float(tags[f"best.{name}"]) == best.params[name]


def test_the_parent_run_holds_the_best_config_and_optunas_plots(
    study_sweep: ResumedStudy,
) -> None:
    sweep = study_sweep.sweep
    [parent] = sweep.parents()
    client = sweep.client()
    top = {artifact.path for artifact in client.list_artifacts(parent.info.run_id)}
    assert "best_config.yaml" in top
    assert {"study.html", "study.png"} <= top


def test_the_best_config_is_saved_in_the_sweep_dir_ready_to_run(
    study_sweep: ResumedStudy,
) -> None:
    sweep = study_sweep.sweep
    best = sweep.study().best_trial
    path = sweep.sweep_dir / "best_config.yaml"
    assert (
        path.read_text() == (sweep.sweep_dir / f"trial_{best.number}" / "config.yaml").read_text()
    )
    cfg = OmegaConf.load(path)
    assert "sweep" not in cfg and "search" not in cfg and "hydra" not in cfg
    for name in SEARCHED:
        assert OmegaConf.select(cfg, name) == best.params[name]


def test_the_summary_prints_best_value_params_counts_and_a_rerun_command(
    study_sweep: ResumedStudy,
) -> None:
    sweep = study_sweep.sweep
    best = sweep.study().best_trial
    out = sweep.stdout
    counts = sweep.parents()[0].data.metrics
    assert (
        f"study tiny: {counts['trials_complete']:.0f} complete, "
        f"{counts['trials_pruned']:.0f} pruned, 0 failed"
    ) in out
    assert f"best value {best.value:.6g} (trial {best.number}" in out
    table = dict(
        line.split()
        for line in out.splitlines()
        if line.startswith("  ") and len(line.split()) == 2
    )
    assert {name: table[name] for name in SEARCHED} == {
        name: str(best.params[name]) for name in SEARCHED
    }  # the table's own rows: the rerun line holds the same values
    assert f"best config: {sweep.sweep_dir / 'best_config.yaml'}" in out
    assert "rerun it: python " in out


def test_the_summary_links_to_the_studys_runs_in_the_model_training_view(
    study_sweep: ResumedStudy,
) -> None:
    experiment_id = study_sweep.sweep.experiment_id()
    link = f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    assert link in study_sweep.sweep.stdout


def test_progress_is_one_line_per_finished_trial_of_the_whole_study(
    study_sweep: ResumedStudy,
) -> None:
    lines = [line for line in study_sweep.first_stdout.splitlines() if line.startswith("[tiny]")]
    finished = [int(line.split(" finished")[0].split()[1].split("/")[0]) for line in lines]
    # Trials of a pack may end in the same epoch: a line whenever the count moved on.
    assert finished == sorted(set(finished))
    assert finished[-1] == 5
    assert all(line.split(" finished")[0].endswith("/5") for line in lines)


def test_each_trial_dir_holds_its_config_and_overrides(study_sweep: ResumedStudy) -> None:
    sweep = study_sweep.sweep
    for trial in sweep.trials():
        folder = sweep.sweep_dir / f"trial_{trial.number}"
        cfg = OmegaConf.load(folder / "config.yaml")
        overrides = yaml.safe_load((folder / "overrides.yaml").read_text())
        for name in SEARCHED:
            assert OmegaConf.select(cfg, name) == trial.params[name]
            assert f"{name}={trial.params[name]}" in overrides


def test_the_printed_rerun_command_trains_the_best_config_as_one_run(
    study_sweep: ResumedStudy,
) -> None:
    sweep = study_sweep.sweep
    best = sweep.study().best_trial
    [line] = [line for line in sweep.stdout.splitlines() if line.startswith("rerun it: ")]
    argv = shlex.split(line.removeprefix("rerun it: "))
    assert argv[0] == "python" and (sweep.work / argv[1]).resolve() == RUN
    result = subprocess.run(  # as printed, from the folder the study ran in (not the project)
        [sys.executable, *argv[1:]], cwd=sweep.work, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    client = sweep.client()
    experiment = client.get_experiment_by_name("study")  # single runs' experiment, not the study's
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert PARENT_TAG not in run.data.tags
    for name in SEARCHED:
        assert float(run.data.params[name]) == best.params[name]
    assert run.data.params["trainer.max_epochs"] == "4"


def test_each_packed_trials_run_holds_its_config_overrides_and_checkpoint(
    study_sweep: ResumedStudy,
) -> None:
    sweep = study_sweep.sweep
    client = sweep.client()
    children = sweep.children()
    for trial in sweep.trials():
        if trial.state.name != "COMPLETE":
            continue
        run_id = children[trial.number].info.run_id
        top = {artifact.path for artifact in client.list_artifacts(run_id)}
        expected = {"config.yaml", "overrides.yaml", "checkpoints", "curves.png"}
        assert expected <= top, (trial.number, top)
        saved = [a.path for a in client.list_artifacts(run_id, "checkpoints")]
        assert saved == ["checkpoints/best.ckpt"], saved


def test_every_trial_has_its_marked_curves_and_a_description_naming_only_what_it_has(
    study_sweep: ResumedStudy,
) -> None:
    sweep = study_sweep.sweep
    client = sweep.client()
    for number, run in sweep.children().items():
        files = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
        note = run.data.tags[NOTE_TAG]
        assert ("curves.png" in note) == ("curves.png" in files), (number, files, note)
        if run.data.tags.get("trial_state") in ("COMPLETE", "PRUNED"):
            assert "curves.png" in files, (number, files)
            steps = sweep.curve(run.info.run_id, "marker/best_epoch")
            assert steps == [int(run.data.metrics["best_epoch"])] * 2, number
    # Each drawn once: the study's summary found the best trial's, and drew no second one.
    assert not (sweep.sweep_dir / "best_trial").exists()


def test_a_trial_reproduces_from_its_mlflow_run_id(
    study_sweep: ResumedStudy, tmp_path: Path
) -> None:
    sweep = study_sweep.sweep
    best = sweep.study().best_trial  # complete: a pruned trial's rerun would not stop early
    # A copy of the store, so that the reproduction adds no run to the shared study. SQLite's
    # backup, not a file copy: the store writes ahead, and recent commits may be in its -wal file.
    copy = tmp_path / "mlflow.db"
    with (
        contextlib.closing(sqlite3.connect(sweep.work / "mlruns" / "mlflow.db")) as source,
        contextlib.closing(sqlite3.connect(copy)) as target,
    ):
        source.backup(target)
    result = _script(
        REPRODUCE,
        best.user_attrs["mlflow_run_id"],
        "--tracking-uri",
        f"sqlite:///{copy}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "identical" in result.stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _api(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_an_mlflow_server_on_the_store_serves_the_study_through_its_rest_api(
    study_sweep: ResumedStudy,
) -> None:
    sweep = study_sweep.sweep
    [parent] = sweep.parents()
    children = sweep.children()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        server_command(Store.from_uri(sweep.tracking_uri), "127.0.0.1", port),
        env=server_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_up(url, process)
        found = _api(
            f"{url}/api/2.0/mlflow/runs/search",
            {"experiment_ids": [sweep.experiment_id()], "max_results": 1000},
        )["runs"]
        tags = {
            run["info"]["run_id"]: {tag["key"]: tag["value"] for tag in run["data"]["tags"]}
            for run in found
        }
        assert set(tags) == {parent.info.run_id} | {run.info.run_id for run in children.values()}
        for number, child in children.items():
            run_id = child.info.run_id
            assert tags[run_id][PARENT_TAG] == parent.info.run_id
            assert tags[run_id]["trial_number"] == str(number)
            query = urllib.parse.urlencode({"run_id": run_id, "metric_key": "val/loss"})
            history = _api(f"{url}/api/2.0/mlflow/metrics/get-history?{query}")["metrics"]
            assert sorted(int(m["step"]) for m in history) == sweep.curve(run_id)
    finally:
        process.terminate()
        process.wait(timeout=30)


# --- devices: two GPU ids made visible on a CPU machine -------------------------------------


@pytest.fixture(scope="module")
def device_sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """CUDA_VISIBLE_DEVICES=0,1 makes the parent see two GPUs; each worker sees its own one
    (and trains on the CPU where there is no GPU behind it)."""
    sweep = Sweep(tmp_path_factory.mktemp("devices"), env={"CUDA_VISIBLE_DEVICES": "0,1"})
    sweep.run(
        "sweep.devices=[0,1]",
        "sweep.trials_per_gpu=1",  # x 2 per GPU: tests/sweep/test_pool.py
        "sweep.workers=auto",
        "sweep.n_trials=4",
        # Spent at once: each worker runs its first trial and no more, so neither can take
        # every trial before the other has started.
        "sweep.timeout=0.001",
        *TINY,
        "trainer.max_epochs=2",
    )
    return sweep


def test_auto_workers_are_one_per_gpu_id(device_sweep: Sweep) -> None:
    assert "2 workers on cuda 0, cuda 1" in device_sweep.stdout
    logs = sorted(path.name for path in device_sweep.sweep_dir.glob("worker_*.log"))
    assert logs == ["worker_0.log", "worker_1.log"]


def test_each_worker_sees_only_its_own_cuda_visible_devices(device_sweep: Sweep) -> None:
    children = device_sweep.children().values()
    assert len(children) == 2  # one each
    for child in children:
        worker = int(child.data.tags["worker"])
        assert child.data.tags["cuda_visible_devices"] == ["0", "1"][worker]
    assert {child.data.tags["cuda_visible_devices"] for child in children} == {"0", "1"}


def test_every_trial_records_the_device_it_ran_on(device_sweep: Sweep) -> None:
    children = device_sweep.children()
    for trial in device_sweep.trials():
        assert trial.user_attrs["device"]
        assert children[trial.number].data.tags["device"] == trial.user_attrs["device"]


# --- search files of the user's own, outside conf/ (--config-dir) -------------------------

# Dotted keys cannot be added to `search` from the command line (`+search.KEY=` takes top-level
# keys only), so a user puts a search space of their own in a file and passes --config-dir.
USER_SEARCH_FILES = {
    # the default space with learning rates down to 1e-5: some trials learn nothing
    "hopeless": "\n".join(
        [
            "optimizer.lr: {type: float, low: 1.0e-5, high: 1.0e-1, log: true}",
            "data.batch_size: {type: categorical, choices: [16, 32, 64, 128]}",
            "model.dropout: {type: float, low: 0.0, high: 0.5}",
        ]
    ),
}


@pytest.fixture(scope="module")
def user_conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config dir holding search/<name>.yaml for each of USER_SEARCH_FILES."""
    conf = tmp_path_factory.mktemp("conf")
    (conf / "search").mkdir()
    for name, text in USER_SEARCH_FILES.items():
        (conf / "search" / f"{name}.yaml").write_text(text + "\n")
    return conf


# --- pruning: the median pruner against none, same seed ------------------------------------

PRUNE_EPOCHS = 10


@pytest.fixture(scope="module")
def pruning_sweeps(tmp_path_factory: pytest.TempPathFactory, user_conf: Path) -> dict[str, Sweep]:
    """The same 6-trial study with the median pruner and with none, run side by side.

    The random sampler (seed 0) draws learning rates down to 1e-5: with 5 complete trials to
    compare against, the median pruner stops the hopeless 6th trial after its first epoch.
    """

    def launch(pruner: str) -> tuple[str, Sweep]:
        sweep = Sweep(tmp_path_factory.mktemp(f"pruner_{pruner}"))
        sweep.run(
            "search=hopeless",
            f"sweep.pruner={pruner}",
            # One at a time, the median pruner compares each trial with those before it; the
            # trials of one pack run side by side (packed pruning: tests/test_packed.py).
            f"sweep.pack={1 if pruner == 'median' else 'auto'}",
            "sweep.sampler=random",
            "sweep.seed=0",
            "sweep.n_trials=6",
            "sweep.workers=1",
            *TINY,
            f"trainer.max_epochs={PRUNE_EPOCHS}",
            "trainer.early_stopping.enabled=false",
            # A range changed on the command line (test_a_search_range_changed_on_the_command_line)
            *(["search.model.dropout.high=0.3"] if pruner == "none" else []),
            config_dir=user_conf,
        )
        return pruner, sweep

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(launch, ["median", "none"]))


def _pruned(sweep: Sweep) -> list[optuna.trial.FrozenTrial]:
    return [t for t in sweep.trials() if t.state == optuna.trial.TrialState.PRUNED]


def test_the_median_pruner_prunes_a_hopeless_trial(pruning_sweeps: dict[str, Sweep]) -> None:
    sweep = pruning_sweeps["median"]
    assert _pruned(sweep), [(t.number, t.state.name) for t in sweep.trials()]
    assert len(sweep.trials()) == 6


def test_a_search_file_from_a_config_dir_reaches_the_workers(
    pruning_sweeps: dict[str, Sweep],
) -> None:
    trials = pruning_sweeps["none"].trials()
    assert all(t.state in FINISHED for t in trials)  # workers composed search=hopeless
    lr = trials[0].distributions["optimizer.lr"]
    assert (lr.low, lr.high, lr.log) == (1e-5, 1e-1, True)


def test_a_search_range_changed_on_the_command_line_is_the_studys_range(
    pruning_sweeps: dict[str, Sweep],
) -> None:
    study = pruning_sweeps["none"].study()
    recorded = json.loads(study.user_attrs[DEFINITION_ATTR])["search.model.dropout"]
    dropout = optuna.distributions.json_to_distribution(recorded)
    assert (dropout.low, dropout.high) == (0.0, 0.3)  # the file's range said 0.5
    assert all(0.0 <= t.params["model.dropout"] <= 0.3 for t in study.trials)
    lr = json.loads(study.user_attrs[DEFINITION_ATTR])["search.optimizer.lr"]
    assert optuna.distributions.json_to_distribution(lr).low == 1e-5  # the rest as the file says


def test_a_pruned_trial_reproduces_the_epochs_it_ran(
    pruning_sweeps: dict[str, Sweep], tmp_path: Path
) -> None:
    sweep = pruning_sweeps["median"]
    trial = _pruned(sweep)[0]
    copy = tmp_path / "mlflow.db"  # the reproduction adds no run to the shared study
    with (
        contextlib.closing(sqlite3.connect(sweep.work / "mlruns" / "mlflow.db")) as source,
        contextlib.closing(sqlite3.connect(copy)) as target,
    ):
        source.backup(target)
    run_id = trial.user_attrs["mlflow_run_id"]
    result = _script(REPRODUCE, run_id, "--tracking-uri", f"sqlite:///{copy}", cwd=tmp_path)
    assert result.returncode == 0, (result.stdout, result.stderr)
    epochs = trial.user_attrs["epochs"]
    assert f"run {run_id} was stopped by its study at epoch {epochs}" in result.stdout
    assert f"val/loss ({epochs} ep)" in result.stdout
    assert result.stdout.rstrip().endswith("identical")


def test_a_pruned_trials_child_run_is_marked_pruned_with_its_shorter_curve(
    pruning_sweeps: dict[str, Sweep],
) -> None:
    sweep = pruning_sweeps["median"]
    children = sweep.children()
    for trial in _pruned(sweep):
        child = children[trial.number]
        assert child.data.tags["trial_state"] == "PRUNED"
        assert child.info.status == "FINISHED"  # closed normally, with its curve
        steps = sweep.curve(child.info.run_id)
        assert 1 <= len(steps) < PRUNE_EPOCHS
        assert steps == list(range(1, trial.user_attrs["epochs"] + 1))


def test_without_a_pruner_every_trial_trains_all_its_epochs(
    pruning_sweeps: dict[str, Sweep],
) -> None:
    sweep = pruning_sweeps["none"]
    children = sweep.children()
    trials = sweep.trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    for trial in trials:
        assert children[trial.number].data.tags["trial_state"] == "COMPLETE"
        assert sweep.curve(children[trial.number].info.run_id) == list(range(1, PRUNE_EPOCHS + 1))


# --- plain Hydra grid sweeps ---------------------------------------------------------------


def test_a_plain_hydra_grid_sweep_runs_one_single_run_per_value(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    result = _script(
        RUN,
        "-m",
        "model.dropout=0.0,0.5",
        "hydra/sweeper=basic",
        f"tracking.uri={store}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        *TINY,
        "trainer.progress_bar=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    runs = all_runs(MlflowClient(store))
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED"]
    assert sorted(run.data.params["model.dropout"] for run in runs) == ["0.0", "0.5"]
    assert all(PARENT_TAG not in run.data.tags for run in runs)

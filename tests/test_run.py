"""run_one(): one tracked run and everything MLflow holds about it afterwards."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from helpers import all_runs, tiny
from study.data import prepare_data
from study.diagnosis import PRUNED
from study.errors import UserError
from study.markers import BEST_EPOCH, CHART, RUNNING_BEST, STOPPED
from study.run import RunOutcome, label_pruned, run_one
from study.tracking import metric_chart_url

ROOT = Path(__file__).resolve().parents[1]
# Stops early on both tasks, so the best epoch is not simply the last one.
STOPS_EARLY = tiny(
    "trainer.max_epochs=60", "trainer.early_stopping.patience=2", "optimizer.lr=0.05"
)
METRICS = {
    "classifier": ["train/loss", "val/loss", "val/acc"],
    "regressor": ["train/loss", "val/loss", "val/rmse", "val/mae", "val/r2"],
}


@dataclass
class Tracked:
    model: str
    cfg: DictConfig
    overrides: list[str]
    outcome: RunOutcome
    client: MlflowClient
    output_dir: Path

    @property
    def run(self):
        return self.client.get_run(self.outcome.run_id)

    def curve(self, name: str) -> list:
        return sorted(
            self.client.get_metric_history(self.outcome.run_id, name), key=lambda m: m.step
        )


@pytest.fixture(scope="module", params=["classifier", "regressor"])
def tracked(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Tracked:
    """One real tracked run per task, in a private sqlite store (shared by the module's tests)."""
    model = request.param
    tmp = tmp_path_factory.mktemp(model)
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    overrides = [f"model={model}", *STOPS_EARLY]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"tracking.uri={uri}", *overrides])
    outcome = run_one(
        cfg, tmp / "out", overrides, run_name=f"tiny-{model}", tags={"purpose": "test"}
    )
    return Tracked(model, cfg, overrides, outcome, MlflowClient(uri), tmp / "out")


def test_run_ends_finished_in_the_configured_experiment(tracked: Tracked) -> None:
    run = tracked.run
    assert run.info.status == "FINISHED"
    assert run.info.run_name == f"tiny-{tracked.model}"
    experiment = tracked.client.get_experiment(run.info.experiment_id)
    assert experiment.name == tracked.cfg.tracking.experiment


def test_params_are_the_resolved_config_flattened(tracked: Tracked) -> None:
    params = tracked.run.data.params
    assert params["optimizer.lr"] == "0.05"
    assert params["model.hidden_sizes"] == "[8]"
    assert params["data.n_samples"] == "120"
    assert params["trainer.early_stopping.patience"] == "2"
    assert params["data.seed"] == "0"  # ${seed} is resolved, not logged as text
    assert params["model"] == tracked.model  # the group its command chose, by name
    hidden = ("hydra", "diagnosis.", "tracking.")
    assert not [key for key in params if key.startswith(hidden) or key.endswith("_target_")]


def test_curves_hold_one_point_per_epoch_with_step_epoch(tracked: Tracked) -> None:
    history = tracked.outcome.result.history
    epochs = list(range(1, len(history) + 1))
    for name in METRICS[tracked.model]:
        points = tracked.curve(name)
        assert [m.step for m in points] == epochs, name
        assert [m.value for m in points] == pytest.approx([row[name] for row in history]), name


def test_best_epoch_is_the_argmin_of_the_logged_val_loss(tracked: Tracked) -> None:
    losses = [m.value for m in tracked.curve("val/loss")]
    metrics = tracked.run.data.metrics
    assert metrics["best_epoch"] == int(np.argmin(losses)) + 1
    assert metrics["best_val_loss"] == pytest.approx(min(losses))
    assert metrics["stopped_epoch"] == len(losses)
    assert metrics["best_epoch"] < metrics["stopped_epoch"]  # early stopping kicked in


def test_the_description_says_the_verdict_why_and_links_both_curves_on_one_chart(
    tracked: Tracked,
) -> None:
    tags = tracked.run.data.tags
    note, result = tags["mlflow.note.content"], tracked.outcome.result
    assert note.startswith(f"**fit: {tags['fit']}**")
    assert tags["fit.reason"] in note
    assert f"Best epoch {result.best_epoch} " in note
    assert f"stopped at epoch {result.stopped_epoch}" in note
    chart = metric_chart_url(tracked.outcome.experiment_id, tracked.outcome.run_id, CHART)
    assert f"]({chart})" in note
    assert "drawn in curves.png (Artifacts)" in note  # a single run has it


def test_the_markers_are_logged_at_the_best_and_the_last_epoch(tracked: Tracked) -> None:
    result = tracked.outcome.result
    best = [(m.step, m.value) for m in tracked.curve(BEST_EPOCH)]
    stopped = [(m.step, m.value) for m in tracked.curve(STOPPED)]
    assert [step for step, _ in best] == [result.best_epoch] * 2
    assert [step for step, _ in stopped] == [result.stopped_epoch] * 2
    assert sorted(value for _, value in best)[0] == 0.0
    assert max(value for _, value in best) > max(m.value for m in tracked.curve("train/loss"))
    flat = [(m.step, m.value) for m in tracked.curve(RUNNING_BEST)]
    assert [step for step, _ in flat] == [result.best_epoch, result.stopped_epoch]
    assert all(value == pytest.approx(result.best_val_loss) for _, value in flat)


@pytest.mark.parametrize(
    ("outcome", "pruned"),
    [
        ({"trial_state": "PRUNED", "reason": "pruned"}, True),
        ({"trial_state": "PRUNED", "reason": "diverged"}, False),  # its curve tells why
        ({"trial_state": "COMPLETE"}, False),
        ({}, False),
    ],
)
def test_only_a_trial_its_pruner_stopped_is_labelled_pruned(
    tracked: Tracked, outcome: dict[str, str], pruned: bool
) -> None:
    result = dataclasses.replace(tracked.outcome.result)
    label_pruned(result, outcome)
    judged = tracked.outcome.result.diagnosis
    if pruned:
        assert result.diagnosis.verdict == PRUNED
        assert f"the pruner stopped it at epoch {result.stopped_epoch}" in result.diagnosis.reason
        assert result.diagnosis.best_epoch == judged.best_epoch
    else:
        assert result.diagnosis == judged


def test_test_metrics_of_the_best_checkpoint_are_logged(tracked: Tracked) -> None:
    metrics = tracked.run.data.metrics
    names = {
        name.replace("val/", "test/") for name in METRICS[tracked.model] if name != "train/loss"
    }
    assert {name for name in metrics if name.startswith("test/")} == names
    for name, value in tracked.outcome.result.test_metrics.items():
        assert metrics[name] == pytest.approx(value)


def test_artifacts_hold_config_overrides_curves_and_checkpoint(tracked: Tracked) -> None:
    client, run_id = tracked.client, tracked.outcome.run_id
    top = {a.path for a in client.list_artifacts(run_id)}
    nested = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert top == {"config.yaml", "overrides.yaml", "curves.png", "checkpoints"}
    assert nested == {"checkpoints/best.ckpt"}


def test_logged_config_and_overrides_are_enough_to_rerun(tracked: Tracked, tmp_path: Path) -> None:
    from mlflow.artifacts import download_artifacts

    local = Path(
        download_artifacts(
            run_id=tracked.outcome.run_id,
            dst_path=str(tmp_path),
            tracking_uri=tracked.client.tracking_uri,
        )
    )
    config = OmegaConf.load(local / "config.yaml")
    assert config.model.hidden_sizes == [8]
    assert config.optimizer.lr == 0.05
    assert config.data.seed == 0
    assert yaml.safe_load((local / "overrides.yaml").read_text()) == tracked.overrides
    assert (local / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = torch.load(local / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert all(key.startswith("net.") for key in state)


def test_tags_record_code_versions_data_and_seed(tracked: Tracked) -> None:
    tags = tracked.run.data.tags
    commit = tags["mlflow.source.git.commit"]
    assert re.fullmatch(r"[0-9a-f]{40}", commit)
    kind = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-t", commit], capture_output=True, text=True
    )
    assert kind.stdout.strip() == "commit"
    for package in ("torch", "pytorch-lightning", "optuna", "mlflow"):
        assert tags[f"version.{package}"] == version(package)
    assert tags["data.fingerprint"] == prepare_data(tracked.cfg).splits.fingerprint
    assert tags["seed"] == "0"
    assert tags["purpose"] == "test"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["data=wine", "model=regressor"], "data=wine"),
        (["data=csv", "data.path=/nonexistent/grades.csv", "data.target=passed"], "data.path"),
    ],
)
def test_bad_input_raises_user_error_and_leaves_no_run(
    make_cfg: Callable[..., DictConfig],
    mlflow_client: MlflowClient,
    tmp_path: Path,
    overrides: list[str],
    match: str,
) -> None:
    with pytest.raises(UserError, match=re.escape(match)):
        run_one(make_cfg(*overrides, "trainer.progress_bar=false"), tmp_path / "out")
    assert all_runs(mlflow_client) == []


def test_text_class_labels_are_recorded_with_the_run(tmp_path: Path) -> None:
    rows = "".join(f"{i},{i % 5},{'pass' if i % 3 else 'fail'}\n" for i in range(60))
    (tmp_path / "grades.csv").write_text(f"a,b,outcome\n{rows}")
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    overrides = ["data=csv", f"data.path={tmp_path / 'grades.csv'}", "data.target=outcome"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"tracking.uri={uri}", *tiny(*overrides)[1:]])
    outcome = run_one(cfg, tmp_path / "out", overrides)
    run = MlflowClient(uri).get_run(outcome.run_id)
    assert run.data.params["data.classes"] == "['fail', 'pass']"
    logged = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert logged["data"]["classes"] == ["fail", "pass"]

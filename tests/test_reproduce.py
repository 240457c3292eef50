"""scripts/reproduce.py as a user runs it: a run rebuilt from its MLflow run id alone."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from helpers import cli, one_error_line, tiny
from study.reproduce import REPRODUCED_FROM_TAG, compare

RunScript = Callable[..., subprocess.CompletedProcess[str]]
pytestmark = pytest.mark.slow


def _train(
    run_script: RunScript, tracking_uri: str, *extra: str, env: dict[str, str] | None = None
) -> str:
    result = run_script("run", *tiny(f"tracking.uri={tracking_uri}", *extra), env=env)
    assert result.returncode == 0, result.stderr
    found = re.search(r"^run ([0-9a-f]{32}) ", result.stdout, re.MULTILINE)
    assert found, result.stdout
    return found.group(1)


@pytest.mark.parametrize("model", ["classifier", "regressor"])
def test_a_run_reproduces_with_identical_metrics_and_curves(
    run_script: RunScript, tracking_uri: str, mlflow_client: MlflowClient, model: str
) -> None:
    # The regressor trains on one torch thread, not the machine's default: the rerun must too.
    threads = {"OMP_NUM_THREADS": "1"} if model == "regressor" else None
    original = _train(run_script, tracking_uri, f"model={model}", "optimizer=sgd", env=threads)
    result = run_script("reproduce", original, "--tracking-uri", tracking_uri)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "identical" in result.stdout
    [copy] = [
        r
        for r in mlflow_client.search_runs([mlflow_client.get_run(original).info.experiment_id])
        if r.data.tags.get(REPRODUCED_FROM_TAG) == original
    ]
    first, second = mlflow_client.get_run(original).data, copy.data
    assert first.params == second.params  # rebuilt from the logged config alone
    for name in ("val/loss", "train/loss"):
        assert [m.value for m in mlflow_client.get_metric_history(original, name)] == [
            m.value for m in mlflow_client.get_metric_history(copy.info.run_id, name)
        ]
    assert first.metrics["best_val_loss"] == second.metrics["best_val_loss"]
    assert copy.info.status == "FINISHED"
    assert second.tags["torch.threads"] == first.tags["torch.threads"]
    if threads:
        assert first.tags["torch.threads"] == "1"


def test_a_run_whose_numbers_differ_exits_non_zero_and_says_which(
    tracking_uri: str, mlflow_client: MlflowClient, tmp_path: Path
) -> None:
    trained = cli("run", *tiny(f"tracking.uri={tracking_uri}"), cwd=tmp_path)
    found = re.search(r"^run ([0-9a-f]{32}) ", trained.stdout, re.MULTILINE)
    assert found, trained.stdout + trained.stderr
    original = found.group(1)
    # As if the original had trained on other hardware: its logged best differs.
    best = mlflow_client.get_run(original).data.metrics["best_val_loss"]
    later = int(time.time() * 1000) + 60_000  # the newest value at step 0 is the one shown
    mlflow_client.log_batch(original, metrics=[Metric("best_val_loss", best + 0.5, later, 0)])
    result = cli("reproduce", original, "--tracking-uri", tracking_uri, cwd=tmp_path)
    assert result.returncode == 1
    assert re.search(r"^best_val_loss .* NO$", result.stdout, re.MULTILINE), result.stdout
    assert "DIFFERENT" in result.stdout


def _logged(client: MlflowClient, experiment_id: str, val: list[float]) -> str:
    """A run whose val/loss and train/loss curves are `val`, its best the last value."""
    run_id = client.create_run(experiment_id).info.run_id
    curves = [
        Metric(key, value, 0, epoch)
        for epoch, value in enumerate(val, start=1)
        for key in ("train/loss", "val/loss")
    ]
    client.log_batch(run_id, metrics=[*curves, Metric("best_val_loss", min(val), 0, 0)])
    return run_id


def test_curves_that_differ_before_their_last_epoch_are_different(
    mlflow_client: MlflowClient,
) -> None:
    experiment_id = mlflow_client.create_experiment("curves")
    original = _logged(mlflow_client, experiment_id, [0.5, 0.4, 0.3])
    # The same last value by another path; an epoch more that ends where the original ended.
    for rerun in ([0.5, 0.45, 0.3], [0.5, 0.4, 0.3, 0.3]):
        table, identical = compare(
            mlflow_client, original, _logged(mlflow_client, experiment_id, rerun)
        )
        assert not identical, rerun
        assert re.search(r"^val/loss \(3 ep\) .* NO$", table, re.MULTILINE), table
        assert re.search(r"^best_val_loss .* yes$", table, re.MULTILINE), table
    same, identical = compare(
        mlflow_client, original, _logged(mlflow_client, experiment_id, [0.5, 0.4, 0.3])
    )
    assert identical, same


# An unknown run id, a store that does not exist and one that cannot be reached: rows of the
# bad-input table (tests/e2e/test_bad_input.py).


def test_a_run_without_a_logged_config_is_one_error_line(
    tracking_uri: str, mlflow_client: MlflowClient, tmp_path: Path
) -> None:
    experiment_id = mlflow_client.create_experiment("study")
    bare = mlflow_client.create_run(experiment_id).info.run_id
    mlflow_client.set_terminated(bare)
    result = cli("reproduce", bare, "--tracking-uri", tracking_uri, cwd=tmp_path)
    assert "config.yaml" in one_error_line(result)


@pytest.mark.parametrize("status", ["KILLED", "FAILED", "RUNNING"])
def test_a_run_that_did_not_finish_is_named_for_what_it_is(
    tracking_uri: str, mlflow_client: MlflowClient, tmp_path: Path, status: str
) -> None:
    experiment_id = mlflow_client.create_experiment("study")
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    if status != "RUNNING":
        mlflow_client.set_terminated(run_id, status)
    result = cli("reproduce", run_id, "--tracking-uri", tracking_uri, cwd=tmp_path)
    line = one_error_line(result)
    assert f"run {run_id} " in line and status in line, line
    assert "nothing to compare" in line and "not recorded by study" not in line


def test_a_studys_parent_run_points_at_one_of_its_trials(
    tracking_uri: str, mlflow_client: MlflowClient, tmp_path: Path
) -> None:
    experiment_id = mlflow_client.create_experiment("lecture")
    tags = {"study": "lecture", "sweep.storage": "/x.journal", "best_run_id": "b" * 32}
    parent = mlflow_client.create_run(experiment_id, tags=tags).info.run_id
    mlflow_client.set_terminated(parent)
    result = cli("reproduce", parent, "--tracking-uri", tracking_uri, cwd=tmp_path)
    line = one_error_line(result)
    assert f"run {parent} is the parent run of study 'lecture'" in line, line
    assert f"reproduce.py {'b' * 32} --tracking-uri {tracking_uri}" in line

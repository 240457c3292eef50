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

from helpers import one_error_line, tiny
from study.reproduce import REPRODUCED_FROM_TAG

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
    run_script: RunScript, tracking_uri: str, mlflow_client: MlflowClient
) -> None:
    original = _train(run_script, tracking_uri)
    # As if the original had trained on other hardware: its logged best differs.
    best = mlflow_client.get_run(original).data.metrics["best_val_loss"]
    later = int(time.time() * 1000) + 60_000  # the newest value at step 0 is the one shown
    mlflow_client.log_batch(original, metrics=[Metric("best_val_loss", best + 0.5, later, 0)])
    result = run_script("reproduce", original, "--tracking-uri", tracking_uri)
    assert result.returncode == 1
    assert re.search(r"^best_val_loss .* NO$", result.stdout, re.MULTILINE), result.stdout
    assert "DIFFERENT" in result.stdout


def test_an_unknown_run_id_is_one_error_line(run_script: RunScript, tracking_uri: str) -> None:
    _train(run_script, tracking_uri)  # the store exists; the id does not
    result = run_script("reproduce", "0" * 32, "--tracking-uri", tracking_uri)
    assert "no run" in one_error_line(result)


def test_a_run_without_a_logged_config_is_one_error_line(
    run_script: RunScript, tracking_uri: str, mlflow_client: MlflowClient
) -> None:
    _train(run_script, tracking_uri)
    experiment = mlflow_client.get_experiment_by_name("study")
    assert experiment is not None
    bare = mlflow_client.create_run(experiment.experiment_id).info.run_id
    mlflow_client.set_terminated(bare)
    result = run_script("reproduce", bare, "--tracking-uri", tracking_uri)
    assert "config.yaml" in one_error_line(result)


def test_a_store_that_does_not_exist_is_one_error_line(
    run_script: RunScript, tmp_path: Path
) -> None:
    missing = f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"
    result = run_script("reproduce", "0" * 32, "--tracking-uri", missing)
    assert "no MLflow store" in one_error_line(result)
    assert not (tmp_path / "nowhere" / "mlflow.db").exists()


def test_an_unreachable_tracking_server_is_one_error_line(run_script: RunScript) -> None:
    result = run_script("reproduce", "0" * 32, "--tracking-uri", "http://127.0.0.1:9", timeout=120)
    assert "cannot be reached" in one_error_line(result)

"""scripts/run.py as a user runs it: argv handling and a tracked run (bad input: e2e/)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import all_runs, tiny
from study.cli import split_config_name

ROOT = Path(__file__).resolve().parents[1]
RunScript = Callable[..., subprocess.CompletedProcess[str]]


@pytest.mark.parametrize(
    ("argv", "rest"),
    [
        ([], []),
        (["a=1"], ["a=1"]),
        (["-m", "a=1"], ["-m", "a=1"]),
        (["--cfg", "job"], ["--cfg", "job"]),
    ],
)
def test_without_a_config_name_the_default_train_config_is_used(
    argv: list[str], rest: list[str]
) -> None:
    assert split_config_name(argv) == ("train", rest)


@pytest.mark.parametrize(
    ("argv", "rest"),
    [
        (["sweep"], []),
        (["-m", "sweep", "a=1"], ["-m", "a=1"]),
        (["--cfg", "job", "sweep", "a=1"], ["--cfg", "job", "a=1"]),
    ],
)
def test_a_leading_bare_word_names_the_config_and_is_removed(
    argv: list[str], rest: list[str]
) -> None:
    assert split_config_name(argv) == ("sweep", rest)


@pytest.mark.parametrize("argv", [["a=1", "sweep"], ["+extra=1", "sweep"], ["~data.seed", "x"]])
def test_bare_words_after_an_override_are_left_to_hydra(argv: list[str]) -> None:
    assert split_config_name(argv) == ("train", argv)


# --- one run, end to end -------------------------------------------------------------------


def _run_id(stdout: str) -> str:
    found = re.search(r"^run ([0-9a-f]{32}) ", stdout, re.MULTILINE)
    assert found, stdout
    return found.group(1)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "metrics"),
    [
        ("classifier", ["train/loss", "val/loss", "val/acc"]),
        ("regressor", ["train/loss", "val/loss", "val/rmse", "val/mae", "val/r2"]),
    ],
)
def test_run_script_trains_and_tracks_one_run(
    run_script: RunScript,
    tracking_uri: str,
    mlflow_client: MlflowClient,
    model: str,
    metrics: list[str],
) -> None:
    result = run_script("run", f"model={model}", f"tracking.uri={tracking_uri}", *tiny())
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    run_id = _run_id(result.stdout)
    assert [run.info.run_id for run in all_runs(mlflow_client)] == [run_id]
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert not [key for key in run.data.params if key.endswith("_target_")]
    for name in metrics:  # the model's own metrics: a classifier's or a regressor's
        steps = [m.step for m in mlflow_client.get_metric_history(run_id, name)]
        assert sorted(steps) == [1, 2, 3, 4], name  # tiny(): 4 epochs, patience 10
    assert run.data.metrics["stopped_epoch"] == 4
    assert f"reproduce.py {run_id}" in result.stdout

"""scripts/run.py as a user runs it: argv handling, tracked runs, and the bad-input contract."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from helpers import all_runs, tiny
from study.cli import reproduce_command, run_hydra, run_plan, split_config_name, train_job
from study.paths import choose_tracking_uri

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


# --- what a run says before and after it trains ----------------------------------------------

CHOICES = {"data": "lecture", "model": "classifier", "optimizer": "adam"}


def test_the_plan_names_data_model_optimizer_epochs_and_the_store(
    make_cfg: Callable[..., DictConfig], tracking_uri: str
) -> None:
    training, tracking = run_plan(make_cfg("trainer.max_epochs=7"), CHOICES)
    assert training == (
        "training: data=lecture (400 samples), model=classifier [32, 32] relu, optimizer=adam "
        "lr=0.001, up to 7 epochs, early stopping after 10 epochs without improvement"
    )
    assert tracking == f"tracking: {tracking_uri}, experiment 'study'"


def test_the_plan_of_a_csv_run_names_the_file_and_target(
    make_cfg: Callable[..., DictConfig],
) -> None:
    cfg = make_cfg("data=csv", "data.path=docs/grades.csv", "data.target=passed")
    training, _ = run_plan(cfg, {**CHOICES, "data": "csv"})
    assert training.startswith("training: data=csv (docs/grades.csv, target passed), ")


def test_the_plan_says_when_mlflow_tracking_uri_chose_the_store(
    make_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    _, tracking = run_plan(make_cfg("tracking.uri=null"), CHOICES)
    assert tracking == (
        f"tracking: sqlite:///{tmp_path.resolve() / 'env.db'} (from MLFLOW_TRACKING_URI), "
        "experiment 'study'"
    )


def test_the_reproduce_command_works_from_the_current_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    default = choose_tracking_uri(None)
    monkeypatch.chdir(ROOT)
    assert reproduce_command("abc", default) == "python scripts/reproduce.py abc"
    monkeypatch.chdir(ROOT / "conf")
    assert reproduce_command("abc", default) == "python ../scripts/reproduce.py abc"


def test_the_reproduce_command_names_a_store_that_is_not_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)
    given = choose_tracking_uri("postgresql://study:secret@db/mlflow")
    assert reproduce_command("abc", given) == (
        "python scripts/reproduce.py abc --tracking-uri 'postgresql://study:***@db/mlflow'"
    )


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as stopped:  # Hydra exits after printing the help
        run_hydra(train_job, [*argv, "--help"])
    assert stopped.value.code in (0, None)
    return capsys.readouterr().out


def test_help_lists_the_commands_config_groups_and_keys_as_the_docs_show(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # run_hydra sets it; restored after the test
    shown = _help(capsys)
    for fragment in [
        "python scripts/run.py -m sweep",
        "python scripts/run.py -m compare",
        "python scripts/reproduce.py RUN_ID",
        "python scripts/compare.py RUN_ID RUN_ID",
        "python scripts/ui.py",
        "data: breast_cancer, csv, diabetes, digits, lecture, wine",
        "optimizer: adam, adamw, rmsprop, sgd",
        "preset: balanced, tiny, wide",
        "optimizer.lr=0.001",
        "trainer.max_epochs=50",
        "README.md",
    ]:
        assert fragment in shown, fragment
    page = (ROOT / "docs" / "runs.md").read_text()
    assert f"```text\n{shown.rstrip()}\n```" in page  # docs/runs.md shows it as it is


def test_help_shows_the_values_of_the_command_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    shown = _help(capsys, "sweep", "optimizer=sgd")
    assert "here data=lecture model=classifier optimizer=sgd:" in shown
    assert "optimizer.lr=0.05 " in shown


# Stops the process at the first import of a heavy library, saying which.
_STOP_AT_HEAVY_IMPORTS = """
import importlib.abc, os, sys
class Stop(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "pytorch_lightning", "lightning", "mlflow"):
            print(f"importing {name}", flush=True)
            os._exit(0)
sys.meta_path.insert(0, Stop())
from study.cli import run_main
sys.argv = ["run.py", *sys.argv[1:]]
sys.exit(run_main())
"""


@pytest.mark.slow
def test_the_plan_is_printed_before_torch_lightning_or_mlflow_are_imported(
    tmp_path: Path,
) -> None:
    """Also: `run.py sweep` without -m says that -m runs the study; the store the variable
    chose is named."""
    result = subprocess.run(
        [sys.executable, "-c", _STOP_AT_HEAVY_IMPORTS, "sweep", f"hydra.run.dir={tmp_path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'env.db'}"},
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    assert len(lines) == 4, result.stdout
    note, training, tracking, heavy = lines
    assert note == (
        f"note: without -m, sweep trains one run; python {ROOT / 'scripts' / 'run.py'} -m sweep "
        "runs the Optuna study"
    )
    assert training.startswith("training: data=lecture (400 samples), model=classifier")
    assert tracking.endswith("env.db (from MLFLOW_TRACKING_URI), experiment 'study'")
    assert heavy.startswith("importing ")


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
    tmp_path: Path,
    tracking_uri: str,
    mlflow_client: MlflowClient,
    model: str,
    metrics: list[str],
) -> None:
    result = run_script(
        "run", f"model={model}", f"tracking.uri={tracking_uri}", *tiny("trainer.progress_bar=true")
    )
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout  # not a terminal: plain epoch lines
    assert "epoch 4/4  train/loss " in result.stdout
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
    assert f"  tracked in: {tracking_uri}\n" in result.stdout
    # The hint works from the folder the command ran in (run_script: a temp folder).
    hint = re.search(r"reproduce: python (\S+) (\w+) --tracking-uri (\S+)$", result.stdout, re.M)
    assert hint, result.stdout
    assert (tmp_path / hint.group(1)).resolve() == ROOT / "scripts" / "reproduce.py"
    assert hint.group(2, 3) == (run_id, tracking_uri)


@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
def test_bad_data_is_refused_before_torch_or_mlflow_is_imported(
    run_script: RunScript, tmp_path: Path, sweep: bool
) -> None:
    import json

    (tmp_path / "gap.csv").write_text("a,b,y\n1,2,0\n3,,1\n")
    probe = tmp_path / "imports"
    probe.mkdir()
    env = {
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "tests" / "probes"), os.environ.get("PYTHONPATH", "")]
        ),
        "STUDY_IMPORT_PROBE": str(probe),
        "STUDY_IMPORT_WATCH": "torch,mlflow,sklearn",
    }
    args = [
        "data=csv",
        "data.path=gap.csv",
        "data.target=y",
        f"tracking.uri=sqlite:///{tmp_path}/m.db",
    ]
    if sweep:
        args = ["-m", "sweep", f"sweep.storage={tmp_path}/s.journal", *args]
    result = run_script("run", *args, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "error: column 'b' of gap.csv has a missing value on line 3: every feature column must "
        "be a finite number with no gaps"
    ]
    [record] = [json.loads(path.read_text()) for path in probe.iterdir()]
    assert record["imported"] == []
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "s.journal").exists()
    assert not (tmp_path / "multirun").exists()

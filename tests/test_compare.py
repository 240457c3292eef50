"""`run.py -m compare` end to end, `scripts/compare.py` on runs already in MLflow, bad input."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, open_dict

from helpers import all_runs, cli, one_error_line
from study.cli import compare_main
from study.compare import CompareCallback, job_overrides
from study.paths import CONF_DIR
from study.tracking import PARENT_RUN_ENV

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
# Every preset on a small class of students; the presets keep their own epochs and capacity.
SMALL = ["data.n_samples=120", "trainer.progress_bar=false"]


@dataclass
class Compared:
    result: subprocess.CompletedProcess[str]
    client: MlflowClient
    uri: str
    folder: Path

    @property
    def parent(self):
        [parent] = [r for r in all_runs(self.client) if "mlflow.parentRunId" not in r.data.tags]
        return parent

    @property
    def children(self) -> list:
        return [r for r in all_runs(self.client) if "mlflow.parentRunId" in r.data.tags]


def _script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / f"{name}.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Compared:
    """One real `python scripts/run.py -m compare` in a temp folder with a private store."""
    folder = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    result = _script("run", "-m", "compare", f"tracking.uri={uri}", *SMALL, cwd=folder)
    assert result.returncode == 0, result.stderr
    return Compared(result, MlflowClient(tracking_uri=uri), uri, folder)


@pytest.mark.slow
def test_compare_nests_one_run_per_preset_under_a_finished_parent(compared: Compared) -> None:
    parent = compared.parent
    assert parent.info.run_name == "compare"
    assert parent.info.status == "FINISHED"
    children = compared.children
    assert sorted(r.info.run_name for r in children) == ["balanced", "tiny", "wide"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {r.info.status for r in children} == {"FINISHED"}


def test_compare_lands_in_its_own_experiment_with_a_filled_parent(compared: Compared) -> None:
    parent = compared.parent
    assert compared.client.get_experiment(parent.info.experiment_id).name == "compare"
    tags = parent.data.tags
    assert tags["fit"] == "compare"
    assert tags["fit.reason"] == "tiny: underfit, balanced: good, wide: overfit"
    assert {tags[f"verdict.{name}"] for name in ("tiny", "balanced", "wide")} == {
        "underfit",
        "good",
        "overfit",
    }
    note = tags["mlflow.note.content"]
    assert f"runs/{parent.info.run_id}/artifactPath/compare.png)" in note
    for child in compared.children:
        assert f"runs/{child.info.run_id}): **{child.data.tags['fit']}**" in note


@pytest.mark.slow
def test_compare_verdicts_differ(compared: Compared) -> None:
    verdicts = {r.info.run_name: r.data.tags["fit"] for r in compared.children}
    assert verdicts == {"tiny": "underfit", "balanced": "good", "wide": "overfit"}


@pytest.mark.slow
def test_command_line_overrides_apply_to_every_run(compared: Compared) -> None:
    assert {r.data.params["data.n_samples"] for r in compared.children} == {"120"}
    sizes = {r.data.params["model.hidden_sizes"] for r in compared.children}
    assert sizes == {"[2]", "[32, 32]", "[256, 256]"}


@pytest.mark.slow
def test_parent_holds_the_figure_and_the_table(compared: Compared, tmp_path: Path) -> None:
    parent_id = compared.parent.info.run_id
    assert {a.path for a in compared.client.list_artifacts(parent_id)} == {
        "compare.png",
        "compare.txt",
    }
    download = compared.client.download_artifacts
    figure = Path(download(parent_id, "compare.png", str(tmp_path)))
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = Path(download(parent_id, "compare.txt", str(tmp_path))).read_text()
    for child in compared.children:
        assert child.info.run_id in table


@pytest.mark.slow
def test_compare_prints_a_table_of_run_verdict_best_epoch_loss_and_gap(
    compared: Compared,
) -> None:
    lines = compared.result.stdout.splitlines()
    header = next(line for line in lines if line.split()[:2] == ["run", "verdict"])
    for column in ("verdict", "best epoch", "best val/loss", "final gap"):
        assert column in header
    for child in compared.children:
        [row] = [line for line in lines[lines.index(header) :] if child.info.run_id in line]
        assert row.split() == [
            child.info.run_name,
            child.data.tags["fit"],
            str(int(child.data.metrics["best_epoch"])),
            f"{child.data.metrics['best_val_loss']:.4f}",
            f"{child.data.metrics['gap_final']:.4f}",
            child.info.run_id,
        ]


@pytest.mark.slow
def test_compare_script_compares_runs_already_in_mlflow(
    compared: Compared, tmp_path: Path
) -> None:
    ids = [r.info.run_id for r in compared.children]
    output = tmp_path / "figures" / "mine.png"
    result = _script(
        "compare", *ids, "--tracking-uri", compared.uri, "--output", str(output), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert output.read_bytes()[:4] == b"\x89PNG"
    # Judged again from the stored curves, the verdicts match the ones logged at training time.
    for child in compared.children:
        [row] = [line for line in result.stdout.splitlines() if child.info.run_id in line]
        assert child.data.tags["fit"] in row.split()


@pytest.mark.slow
def test_compare_script_writes_its_figure_under_outputs_not_where_it_runs(
    compared: Compared, tmp_path: Path
) -> None:
    ids = [r.info.run_id for r in compared.children]
    result = cli("compare", *ids, "--tracking-uri", compared.uri, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("figure: ")]
    figure = Path(line.removeprefix("figure: "))
    assert figure.parts[:2] == ("outputs", "compare") and figure.name == "compare.png"
    assert (tmp_path / figure).read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "compare.png").exists()


@pytest.mark.slow
def test_compare_script_rejects_an_unknown_run_id(compared: Compared, tmp_path: Path) -> None:
    known = compared.children[0].info.run_id
    result = _script("compare", known, "0" * 32, "--tracking-uri", compared.uri, cwd=tmp_path)
    assert "no run '00000000" in one_error_line(result)


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """compare.main in this process; the bad-input contract; its one line."""
    code = compare_main(list(argv))
    out, err = capsys.readouterr()
    return one_error_line(subprocess.CompletedProcess(list(argv), code, out, err))


def test_compare_needs_two_different_runs(
    capsys: pytest.CaptureFixture[str], mlflow_client: MlflowClient, tracking_uri: str
) -> None:
    experiment = mlflow_client.create_experiment("e")
    run_id = mlflow_client.create_run(experiment).info.run_id
    line = _main(capsys, run_id, "--tracking-uri", tracking_uri)
    assert "at least two different runs, got 1" in line
    line = _main(capsys, run_id, run_id, "--tracking-uri", tracking_uri)
    assert "at least two different runs, got 1" in line
    assert "got 0" in _main(capsys, "--tracking-uri", tracking_uri)


def test_compare_rejects_a_run_without_curves(
    capsys: pytest.CaptureFixture[str],
    mlflow_client: MlflowClient,
    tracking_uri: str,
    tmp_path: Path,
) -> None:
    experiment = mlflow_client.create_experiment("e")
    ids = [mlflow_client.create_run(experiment).info.run_id for _ in range(2)]
    mlflow_client.log_metric(ids[0], "train/loss", 0.5, step=1)  # half a curve is no curve
    line = _main(capsys, *ids, "--tracking-uri", tracking_uri, "--output", str(tmp_path / "f.png"))
    assert f"run {ids[0]}" in line and "no train/loss and val/loss curves" in line
    assert not (tmp_path / "f.png").exists()


def test_compare_rejects_a_store_that_does_not_exist(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "mlflow.db"
    line = _main(capsys, "a", "b", "--tracking-uri", f"sqlite:///{missing}")
    assert "no MLflow store" in line
    assert not missing.exists()


def test_compare_rejects_an_unknown_option_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--colour" in _main(capsys, "a", "b", "--colour")


@pytest.mark.slow
def test_compare_with_one_preset_left_fails_in_one_line(
    tracking_uri: str, mlflow_client: MlflowClient, tmp_path: Path
) -> None:
    result = cli(
        "run",
        "-m",
        "compare",
        f"tracking.uri={tracking_uri}",
        "hydra.sweeper.params.preset=wide",
        "trainer.max_epochs=3",
        *SMALL,
        cwd=tmp_path,
    )
    assert "at least two different runs, got 1" in one_error_line(result)
    statuses = {r.info.run_name: r.info.status for r in all_runs(mlflow_client)}
    assert statuses == {"compare": "FAILED", "wide": "FINISHED"}


@pytest.mark.slow
def test_compare_on_unusable_data_fails_before_any_run_exists(
    tracking_uri: str, mlflow_client: MlflowClient, tmp_path: Path
) -> None:
    result = cli(
        "run",
        "-m",
        "compare",
        f"tracking.uri={tracking_uri}",
        "data=diabetes",
        *SMALL[1:],
        cwd=tmp_path,
    )
    assert "use model=regressor" in one_error_line(result)
    assert all_runs(mlflow_client) == []


# --- the jobs checked before the parent run exists ----------------------------------------


@pytest.fixture
def compare_config(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., DictConfig]]:
    """The config `-m compare` hands its callback, `task` being the command line's overrides;
    composed inside an initialized Hydra, as a running app's callback is."""

    def _make(*task: str) -> DictConfig:
        uri = f"tracking.uri={tracking_uri}"
        config = compose("compare", overrides=[uri], return_hydra_config=True)
        with open_dict(config):
            config.hydra.overrides.task = [*task, uri]
        return config

    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield _make


def test_job_overrides_are_the_grid_with_the_command_line_winning(
    compare_config: Callable[..., DictConfig],
) -> None:
    jobs = job_overrides(compare_config("preset=balanced,wide", "model.dropout=0.0,0.5"))
    presets_and_dropout = [[o for o in job if not o.startswith("tracking.")] for job in jobs]
    assert presets_and_dropout == [
        ["preset=balanced", "model.dropout=0.0"],
        ["preset=balanced", "model.dropout=0.5"],
        ["preset=wide", "model.dropout=0.0"],
        ["preset=wide", "model.dropout=0.5"],
    ]


def test_an_unknown_preset_leaves_no_parent_run(
    compare_config: Callable[..., DictConfig], mlflow_client: MlflowClient
) -> None:
    callback = CompareCallback()
    callback.on_multirun_start(compare_config("preset=tiny,huge"))
    assert callback.parent_run_id is None
    assert PARENT_RUN_ENV not in os.environ
    assert all_runs(mlflow_client) == []


def test_known_presets_get_a_parent_run(
    compare_config: Callable[..., DictConfig], mlflow_client: MlflowClient
) -> None:
    callback = CompareCallback()
    callback.on_multirun_start(compare_config("preset=tiny,wide"))
    try:
        assert [r.info.run_id for r in all_runs(mlflow_client)] == [callback.parent_run_id]
    finally:
        atexit.unregister(callback._close_unfinished)
        callback._close_unfinished()


def test_a_pruned_trial_is_compared_as_pruned_not_judged_from_its_cut_curve(
    mlflow_client: MlflowClient, tracking_uri: str
) -> None:
    from mlflow.entities import Metric

    from study.compare import load_run

    experiment = mlflow_client.create_experiment("e")
    run_id = mlflow_client.create_run(experiment, tags={"fit": "pruned"}).info.run_id
    # Cut after three epochs while still falling steeply: its curve alone reads underfit.
    curve = [(0.9, 0.9), (0.8, 0.8), (0.7, 0.7)]
    mlflow_client.log_batch(
        run_id,
        metrics=[
            Metric(key, value, 0, epoch)
            for epoch, pair in enumerate(curve, start=1)
            for key, value in zip(("train/loss", "val/loss"), pair, strict=True)
        ],
    )
    compared = load_run(mlflow_client, run_id, tracking_uri)
    assert compared.diagnosis.verdict == "pruned"
    assert "the pruner stopped it at epoch 3" in compared.diagnosis.reason

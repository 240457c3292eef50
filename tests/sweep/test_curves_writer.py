"""study.sweep.curves_writer: packed trials' figures drawn and logged by the sweep's parent and
its helper processes."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from study.sweep.curves_writer import DRAWN, CurvesFromWorkers, CurvesJob
from study.sweep.spec import CurvesDue
from study.tracking import NOTE_TAG, Store

HISTORY = [
    {"epoch": 1.0, "train/loss": 0.9, "val/loss": 0.8, "val/acc": 0.5},
    {"epoch": 2.0, "train/loss": 0.6, "val/loss": 0.5, "val/acc": 0.7},
    {"epoch": 3.0, "train/loss": 0.4, "val/loss": 0.55, "val/acc": 0.7},
]


def job(run_id: str, folder: Path) -> CurvesJob:
    return CurvesJob.of(
        run_id, folder / "curves.png", "trial 1", "good", "why", 0.69, HISTORY, "see curves.png"
    )


def test_a_job_carries_only_the_curves_it_draws() -> None:
    assert [set(row) for row in job("r", Path("x")).history] == [
        {"epoch", "train/loss", "val/loss"}
    ] * 3


HELPER = """
import io, sys
from study.sweep.curves_writer import serve
serve(io.StringIO(sys.argv[1] + "\\n"))
print(sorted({m.split(".")[0] for m in sys.modules} & {"mlflow", "optuna", "torch", "sqlalchemy"}))
"""


def test_a_helper_only_draws_importing_no_mlflow_optuna_or_torch(tmp_path: Path) -> None:
    # Its start is matplotlib's import (~0.4 s of CPU), not MLflow's and its SQL store's (~2.6 s).
    line = json.dumps(asdict(job("r", tmp_path)))
    result = subprocess.run(
        [sys.executable, "-c", HELPER, line], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [DRAWN, "[]"], result.stdout
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


def _figures_for(
    tmp_path: Path, trials: int, helpers_at: int
) -> tuple[Store, list[str], CurvesFromWorkers]:
    """`trials` runs whose figures the parent heard of (CurvesDue), not yet closed."""
    store = Store.from_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    client = store.client()
    experiment = store.experiment_id(client, "e")
    runs = [client.create_run(experiment).info.run_id for _ in range(trials)]
    figures = CurvesFromWorkers(store.uri, helpers_at=helpers_at, most=2)
    for number, run_id in enumerate(runs):
        figures.on_event(CurvesDue(asdict(job(run_id, tmp_path / f"trial_{number}"))))
    return store, runs, figures


def _each_has_its_figure(store: Store, runs: list[str]) -> None:
    client = store.client()
    for run_id in runs:
        assert [a.path for a in client.list_artifacts(run_id)] == ["curves.png"]
        assert client.get_run(run_id).data.tags[NOTE_TAG] == "see curves.png"


@pytest.mark.slow
def test_a_few_figures_are_drawn_by_the_parent_itself_at_the_study_end(tmp_path: Path) -> None:
    store, runs, figures = _figures_for(tmp_path, trials=2, helpers_at=3)
    assert (figures.writers, len(figures.waiting)) == ([], 2)  # no helper's start to pay
    assert (figures.backlog(), figures.too_far_behind()) == (2, False)
    figures.close()
    _each_has_its_figure(store, runs)


@pytest.mark.slow
def test_many_figures_start_helpers_that_share_them_out_and_skip_a_bad_one(
    tmp_path: Path,
) -> None:
    store, runs, figures = _figures_for(tmp_path, trials=5, helpers_at=3)
    assert (len(figures.writers), figures.waiting, figures.sent) == (2, [], 5)
    figures.on_event(CurvesDue(asdict(job("0" * 32, tmp_path / "missing"))))  # no such run
    writers = figures.writers
    figures.close()
    _each_has_its_figure(store, runs)  # the bad one reported, not fatal
    assert [writer.drawn for writer in writers] == [3, 3]  # each heard, the bad one too
    assert figures.backlog() == 0
    for number in range(5):
        assert (tmp_path / f"trial_{number}" / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_figures_fall_too_far_behind_past_six_a_helper(tmp_path: Path) -> None:
    _, _, figures = _figures_for(tmp_path, trials=14, helpers_at=3)
    assert figures.backlog() > 12 and figures.too_far_behind()  # just sent: none drawn yet
    figures.abort()


def test_an_aborted_study_draws_nothing_more(tmp_path: Path) -> None:
    store, runs, figures = _figures_for(tmp_path, trials=2, helpers_at=3)
    figures.abort()
    figures.close()
    client = store.client()
    assert [client.list_artifacts(run_id) for run_id in runs] == [[], []]

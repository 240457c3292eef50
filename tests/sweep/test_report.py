"""study.sweep.report: what the parent run holds at the study's end."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from PIL import Image

from study.plots import DPI
from study.sweep.backends import make_storage
from study.sweep.report import (
    OPTUNA_SIZE,
    PLOTS,
    finish_parent_run,
    log_history,
    optimization_history,
    optuna_figures,
    save_plots,
)
from study.tracking import NOTE_TAG, Store, metric_chart_url

COMPLETE, PRUNED, FAIL = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.PRUNED,
    optuna.trial.TrialState.FAIL,
)
VALUES = {0: 0.7, 1: 0.5, 2: None, 3: 0.6, 4: 0.4}  # trial 2 pruned


def study_of(direction: str, run_ids: dict[int, str] | None = None) -> optuna.Study:
    study = optuna.create_study(study_name="told", direction=direction)
    distribution = optuna.distributions.FloatDistribution(0.0, 1.0)
    for number, value in VALUES.items():
        study.add_trial(
            optuna.trial.create_trial(
                state=PRUNED if value is None else COMPLETE,
                value=value,
                params={"x": number / 10},
                distributions={"x": distribution},
                user_attrs={"mlflow_run_id": (run_ids or {}).get(number, "")},
                intermediate_values={1: 0.9},
            )
        )
    return study


@pytest.fixture
def client(tmp_path: Path) -> tuple[MlflowClient, str]:
    store = Store.from_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = store.client()
    return client, store.experiment_id(client, "told")


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.parametrize(
    ("direction", "best"),
    [("minimize", [0.7, 0.5, 0.5, 0.4]), ("maximize", [0.7, 0.7, 0.7, 0.7])],
)
def test_optimization_history_is_each_complete_trial_and_the_best_so_far(
    direction: str, best: list[float]
) -> None:
    rows = optimization_history(study_of(direction))
    assert [(number, value) for number, value, _ in rows] == [
        (0, 0.7),
        (1, 0.5),
        (3, 0.6),
        (4, 0.4),
    ]
    assert [running for _, _, running in rows] == best


def test_the_parent_logs_the_history_by_trial_number_once_across_resumes(
    client: tuple[MlflowClient, str],
) -> None:
    mlflow, experiment_id = client
    parent = mlflow.create_run(experiment_id).info.run_id
    study = study_of("minimize")
    log_history(mlflow, parent, study)
    log_history(mlflow, parent, study)  # a resumed study ends again
    assert history(mlflow, parent, "trial_value") == [(0, 0.7), (1, 0.5), (3, 0.6), (4, 0.4)]
    assert history(mlflow, parent, "best_value") == [(0, 0.7), (1, 0.5), (3, 0.5), (4, 0.4)]


def test_the_parent_row_shares_its_best_trials_metrics_verdict_and_links_it(
    client: tuple[MlflowClient, str], tmp_path: Path
) -> None:
    mlflow, experiment_id = client
    parent = mlflow.create_run(experiment_id, run_name="study told").info.run_id
    best = mlflow.create_run(experiment_id, run_name="trial 4").info.run_id
    curves = [
        Metric(key, value, 0, epoch)
        for epoch, (train, val) in enumerate([(0.9, 0.8), (0.7, 0.6), (0.6, 0.65)], start=1)
        for key, value in (("train/loss", train), ("val/loss", val))
    ]
    mlflow.log_batch(best, metrics=curves)
    summary = {"best_val_loss": 0.6, "best_epoch": 2.0, "stopped_epoch": 3.0, "test/loss": 0.61}
    for key, value in summary.items():
        mlflow.log_metric(best, key, value)
    mlflow.set_tag(best, "fit", "good")
    mlflow.set_tag(best, "fit.reason", "val/loss bottomed out at epoch 2")

    finish_parent_run(mlflow, parent, study_of("minimize", {4: best}), tmp_path)

    run = mlflow.get_run(parent)
    assert {key: run.data.metrics[key] for key in summary} == summary
    assert not [key for key in run.data.metrics if key.startswith(("train/", "val/"))]
    assert run.data.metrics["best_value"] == 0.4
    assert run.data.tags["fit"] == "good"
    note = run.data.tags[NOTE_TAG]
    assert f"[trial 4](#/experiments/{experiment_id}/runs/{best})" in note
    chart = metric_chart_url(experiment_id, parent, ("trial_value", "best_value"))
    assert f"[Optimization history]({chart})" in note
    # A packed trial draws no curves.png; the study's best gets one at the end.
    assert "curves.png" in {a.path for a in mlflow.list_artifacts(best)}


def test_the_summary_and_the_parent_count_complete_pruned_and_failed_trials(
    client: tuple[MlflowClient, str], tmp_path: Path
) -> None:
    # The default storage (a journal file); tests/e2e/test_multihost.py checks PostgreSQL.
    mlflow, experiment_id = client
    parent = mlflow.create_run(experiment_id, run_name="study counted").info.run_id
    storage = make_storage(str(tmp_path / "counted.journal"))
    study = optuna.create_study(study_name="counted", storage=storage)
    for state in [COMPLETE, PRUNED, FAIL, PRUNED, FAIL, FAIL, COMPLETE]:
        study.tell(study.ask(), 0.5 if state == COMPLETE else None, state=state)
    study.ask()  # a trial still running counts in none of them

    summary = finish_parent_run(mlflow, parent, study, tmp_path)

    assert summary.splitlines()[0] == "study counted: 2 complete, 2 pruned, 3 failed"
    metrics = mlflow.get_run(parent).data.metrics
    counts = {key: metrics[key] for key in ("trials_complete", "trials_pruned", "trials_fail")}
    assert counts == {"trials_complete": 2, "trials_pruned": 2, "trials_fail": 3}


def searched_study() -> optuna.Study:
    """Six trials over two parameters, each with a curve of three epochs; one pruned."""
    study = optuna.create_study(study_name="plots")
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    batch = optuna.distributions.CategoricalDistribution([16, 32, 64])
    for number in range(6):
        value = 1.0 / (number + 1)
        study.add_trial(
            optuna.trial.create_trial(
                state=PRUNED if number == 2 else COMPLETE,
                value=None if number == 2 else value,
                params={
                    "optimizer.lr": 10 ** -(1 + number % 3),
                    "data.batch_size": 16 << number % 3,
                },
                distributions={"optimizer.lr": lr, "data.batch_size": batch},
                intermediate_values={epoch: value * (4 - epoch) for epoch in (1, 2, 3)},
            )
        )
    return study


def test_optunas_plots_draw_the_studys_trials() -> None:
    study = searched_study()
    figures = dict(optuna_figures(study))
    assert list(figures) == list(PLOTS)
    complete = [t for t in study.trials if t.state == COMPLETE]

    [history] = figures["optimization_history"].axes
    assert history.get_title() == "Optimization History Plot"
    assert history.get_xlabel() == "Trial" and history.get_ylabel() == "Objective Value"
    assert len(history.collections[0].get_offsets()) == len(complete)  # a point per trial

    [importances] = figures["param_importances"].axes
    assert importances.get_title(loc="left") == "Hyperparameter Importances"
    assert importances.get_xlabel() == "Hyperparameter Importance"
    assert sorted(t.get_text() for t in importances.get_yticklabels()) == sorted(study.best_params)
    assert len(importances.patches) == 2  # a bar per parameter

    parallel = figures["parallel_coordinate"].axes[0]
    assert parallel.get_title() == "Parallel Coordinate Plot"
    assert len(parallel.collections[0].get_segments()) == len(complete)  # a line per trial

    [curves] = figures["intermediate_values"].axes
    assert curves.get_title() == "Intermediate Values Plot"
    assert curves.get_xlabel() == "Step"
    assert len(curves.get_lines()) == len(study.trials)  # pruned trials' curves too
    first = curves.get_lines()[0]
    assert (list(first.get_xdata()), list(first.get_ydata())) == ([1, 2, 3], [3.0, 2.0, 1.0])


def test_save_plots_writes_each_figure_and_closes_it(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    paths = save_plots(searched_study(), tmp_path)
    assert [p.name for p in paths] == [f"{name}.png" for name in PLOTS]
    assert all(p.read_bytes().startswith(b"\x89PNG") and p.stat().st_size > 10_000 for p in paths)
    assert plt.get_fignums() == before
    width, height = OPTUNA_SIZE[0] * DPI, OPTUNA_SIZE[1] * DPI  # 1000x600 px
    for path in paths:  # cropped to what is drawn ("tight"): most of that, never more
        found_width, found_height = Image.open(path).size
        assert 0.8 * width <= found_width <= width, (path.name, found_width)
        assert 0.9 * height <= found_height <= height, (path.name, found_height)


def test_no_plot_before_a_trial_completes(tmp_path: Path) -> None:
    study = optuna.create_study()
    study.tell(study.ask(), state=PRUNED)
    assert save_plots(study, tmp_path) == []


def test_the_rerun_command_runs_as_printed_with_spaces_unicode_and_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shlex
    import subprocess

    from study.paths import SCRIPTS_DIR
    from study.sweep.report import best_config_command

    overrides = [
        "data=csv",
        "data.target='réussi ✓'",  # quoted for Hydra, as a user types it
        "data.path=my data/grades.csv",
        "model.hidden_sizes=[8,8]",
        "sweep.n_trials=5",  # the study's own: not part of a single run
    ]
    trial = optuna.trial.create_trial(value=0.1, user_attrs={"overrides": overrides})
    monkeypatch.chdir(tmp_path)  # another folder than the project's
    command = best_config_command(trial)
    words = shlex.split(command)
    assert words[2:] == overrides[:-1]  # each override back as one word, as it was given
    assert words[0] == "python" and (tmp_path / words[1]).resolve() == SCRIPTS_DIR / "run.py"
    echoed = subprocess.run(
        ["bash", "-c", f"printf '%s\\n' {command.removeprefix('python ')}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert echoed[1:] == overrides[:-1]  # what a shell hands scripts/run.py

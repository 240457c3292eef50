"""study.sweep.report: what the parent run holds at the study's end."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from study.sweep.report import finish_parent_run, log_history, optimization_history
from study.tracking import NOTE_TAG, Store, metric_chart_url

COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED
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
    store = Store.from_config(f"sqlite:///{tmp_path / 'mlflow.db'}")
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

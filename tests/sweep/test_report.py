"""study.sweep.report: what the parent run holds at the study's end."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from study.sweep.backends import make_storage
from study.sweep.report import finish_parent_run, log_history, optimization_history
from study.sweep.study_page import figures, history_figure, write_page
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
    assert run.data.tags["fit"] == "study"  # a study, not a run: its best trial's word is not
    note = run.data.tags[NOTE_TAG]
    assert f"[trial 4](#/experiments/{experiment_id}/runs/{best})" in note
    chart = metric_chart_url(experiment_id, parent, ("trial_value", "best_value"))
    assert f"[Optimization history]({chart})" in note
    # The best trial's figure, drawn at the study's end if its run has none.
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


def test_the_study_page_shows_pruned_trials_where_they_were_stopped() -> None:
    study = searched_study()
    history = history_figure(study, "val/loss")
    complete, pruned, best = history.data
    assert list(complete.x) == [0, 1, 3, 4, 5]
    assert (list(pruned.x), list(pruned.y), list(pruned.customdata)) == ([2], [1 / 3], [3])
    assert pruned.marker.symbol == "x"
    assert list(best.y) == [1.0, 0.5, 0.25, 0.2, 1 / 6]


def test_the_study_page_holds_four_figures_and_plotly_inlined_once(tmp_path: Path) -> None:
    made = figures(searched_study(), "val/loss")
    titles = [figure.layout.title.text for figure in made]
    assert titles[0] == "Optimization history"
    assert titles[1] == "Parallel coordinates, coloured by val/loss at the best epoch"
    assert "Hyperparameter Importances" in titles[2]
    assert titles[3].startswith("Intermediate values")
    assert not [t for t in made[3].data if t.showlegend is not False]  # no legend of trials
    page = write_page(searched_study(), tmp_path / "study.html")
    assert page is not None
    text = page.read_text()
    assert text.count("plotly.js v") == 1  # the library, inlined once for four figures
    assert 'src="https://cdn.plot.ly' not in text  # no network: no script from a CDN
    assert text.count('class="plotly-graph-div"') == 4


def test_no_page_before_a_trial_finishes(tmp_path: Path) -> None:
    study = optuna.create_study()
    study.ask()
    assert write_page(study, tmp_path / "study.html") is None


def _trial(
    mlflow: MlflowClient,
    experiment_id: str,
    parent: str,
    name: str,
    verdict: str,
    curve: list[tuple[float, float]],
    **metrics: float,
) -> str:
    """A trial's child run: its curves, final metrics and verdict as a trial logs them."""
    run_id = mlflow.create_run(
        experiment_id, run_name=name, tags={"mlflow.parentRunId": parent, "fit": verdict}
    ).info.run_id
    points = [
        Metric(key, value, 0, epoch)
        for epoch, (train, val) in enumerate(curve, start=1)
        for key, value in (("train/loss", train), ("val/loss", val))
    ]
    best = min(val for _, val in curve)
    finals = {"best_val_loss": best, "baseline_loss": 1.0, **metrics}
    points += [Metric(key, value, 0, 0) for key, value in finals.items()]
    mlflow.log_batch(run_id, metrics=points)
    return run_id


def test_the_parent_counts_its_trials_by_verdict_and_draws_the_clearest_side_by_side(
    client: tuple[MlflowClient, str], tmp_path: Path
) -> None:
    from study.sweep.story import STORY_FIGURE, pick, trial_runs

    mlflow, experiment_id = client
    parent = mlflow.create_run(experiment_id, run_name="study told").info.run_id
    falling = [(0.9 - 0.1 * i, 0.8 - 0.1 * i) for i in range(5)]
    best = _trial(mlflow, experiment_id, parent, "trial 4", "good", falling)
    _trial(mlflow, experiment_id, parent, "trial 0", "underfit", [(0.95, 0.9)] * 5)
    barely = _trial(mlflow, experiment_id, parent, "trial 1", "underfit", [(0.99, 0.98)] * 5)
    rising = [(0.9 - 0.15 * i, 0.5 + 0.1 * abs(i - 1)) for i in range(5)]
    _trial(mlflow, experiment_id, parent, "trial 3", "overfit", rising, val_rise=0.3)
    worst = _trial(mlflow, experiment_id, parent, "trial 5", "overfit", rising, val_rise=0.6)
    pruned = _trial(mlflow, experiment_id, parent, "trial 2", "pruned", [(0.9, 0.85)])

    finish_parent_run(mlflow, parent, study_of("minimize", {4: best}), tmp_path)

    run = mlflow.get_run(parent)
    assert run.data.tags["fit"] == "study"
    assert (
        run.data.tags["fit.reason"]
        == "trials: 1 good, 2 underfit, 2 overfit, 0 diverged, 1 pruned"
    )
    note = run.data.tags[NOTE_TAG]
    assert "Its trials: 1 good, 2 underfit, 2 overfit, 0 diverged, 1 pruned" in note
    assert f"runs/{parent}/artifactPath/{STORY_FIGURE})" in note
    assert "orderByKey=metrics.%60best_val_loss%60&orderByAsc=true" in note
    assert STORY_FIGURE in {a.path for a in mlflow.list_artifacts(parent)}
    roles = {role: r.info.run_id for role, r in pick(trial_runs(mlflow, experiment_id, parent))}
    assert roles == {"best": best, "clearest underfit": barely, "clearest overfit": worst}
    table = json.loads(mlflow.get_experiment(experiment_id).tags["study.runs_table"])
    assert table["selectedColumns"][0] == "params.`x`"
    assert table["runsExpanded"] == {parent: True}
    assert pruned not in roles.values()


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

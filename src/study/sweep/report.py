"""The end of a study: summary table, best config, its story and its interactive plots, all on
the parent run."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from pathlib import Path

import optuna
from mlflow.entities import Metric, Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from study.compare import load_run
from study.diagnosis import counts_line
from study.errors import UserError
from study.paths import script_command
from study.plots import plot_curves
from study.secrets import redact
from study.sweep.backends import best_trial
from study.sweep.story import STORY_FIGURE, Story, tell_story
from study.sweep.study_page import PAGE, write_page
from study.tracking import (
    NOTE_TAG,
    artifact_url,
    clean_number,
    log_metrics,
    metric_chart_url,
    sorted_runs_url,
)
from study.ui import save_state, study_state

TRIAL_VALUE, BEST_VALUE = "trial_value", "best_value"  # on the parent, step = trial number
CURVE_PREFIXES = ("train/", "val/")  # per-epoch curves: a trial's own, not the study's
CURVES_ARTIFACT = "curves.png"
SWEEP_ONLY_KEYS = ("sweep.", "sweep=", "search", "hydra.sweep", "hydra/")


def best_config_command(trial: optuna.trial.FrozenTrial) -> str:
    """The command line that reruns a trial as a single run, from the current folder (each
    value shell-quoted: `data.target='réussi ✓'`)."""
    overrides = [
        o
        for o in trial.user_attrs.get("overrides", [])
        if not o.lstrip("+~").startswith(SWEEP_ONLY_KEYS)
    ]
    return script_command("run", *(redact(o) for o in overrides))


def copy_best_config(trial: optuna.trial.FrozenTrial, sweep_dir: Path) -> Path | None:
    """The best trial's resolved config, ready to run, as <sweep dir>/best_config.yaml."""
    source = Path(trial.user_attrs.get("output_dir", "")) / "config.yaml"
    if not source.is_file():
        return None
    target = sweep_dir / "best_config.yaml"
    shutil.copyfile(source, target)
    return target


def import_plotting_meanwhile() -> threading.Thread:
    """Import what the study's page needs (Optuna's plotly figures and importances, which bring
    in scikit-learn: ~1 s) in a low-priority thread while the trials run, not at the study's
    end. Join it before finish_parent_run."""

    def imports() -> None:
        with contextlib.suppress(OSError):  # Linux: niceness is per thread
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        import optuna.importance
        import optuna.visualization  # noqa: F401
        import plotly.graph_objects  # noqa: F401

    thread = threading.Thread(target=imports, name="import-plotting", daemon=True)
    thread.start()
    return thread


def finish_parent_run(
    client: MlflowClient, run_id: str, study: optuna.Study, sweep_dir: Path
) -> str:
    """Log the study's outcome on its parent run and return the summary to print."""
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): 0 for state in optuna.trial.TrialState}
    for trial in trials:
        counts[trial.state.name.lower()] += 1
    metrics: dict[str, float] = {
        f"trials_{state}": counts[state] for state in ("complete", "pruned", "fail")
    }
    lines = [
        f"study {study.study_name}: {counts['complete']} complete, {counts['pruned']} "
        f"pruned, {counts['fail']} failed"
    ]
    log_history(client, run_id, study)
    best = best_trial(study)
    experiment_id = client.get_run(run_id).info.experiment_id
    story = tell_story(client, experiment_id, run_id, sweep_dir)
    if story.figure is not None:
        client.log_artifact(run_id, str(story.figure))
    lines.append(f"trials by verdict: {counts_line(story.counts)}")
    tags = {NOTE_TAG: parent_note(client, run_id, study, best, counts, story), **story.tags}
    if best is not None:
        best_run_id = best.user_attrs.get("mlflow_run_id", "")
        tags |= {
            "best_trial_number": str(best.number),
            "best_run_id": best_run_id,
            **{f"best.{k}": str(v) for k, v in best.params.items()},
        }
        summary, best_tags = best_run_summary(client, best_run_id, sweep_dir)
        metrics |= summary
        tags |= best_tags
        lines.append(
            f"best value {best.value:.6g} (trial {best.number}, run {best_run_id or '?'})"
        )
        width = max(len(k) for k in best.params) if best.params else 0
        lines += [f"  {k:<{width}}  {v}" for k, v in best.params.items()]
        config = copy_best_config(best, sweep_dir)
        if config is not None:
            client.log_artifact(run_id, str(config))
            lines.append(f"best config: {config}")
        lines.append(f"rerun it: {best_config_command(best)}")
    else:
        lines.append("no trial completed yet")
    log_metrics(client, run_id, metrics, tags)
    save_state(client, experiment_id, table_of(study, run_id))
    page = write_page(study, sweep_dir / PAGE)
    if page is not None:
        client.log_artifact(run_id, str(page))
    return "\n".join(lines)


def table_of(study: optuna.Study, parent_run_id: str) -> dict[str, object]:
    """How the study's runs table opens: its searched parameters as columns, the parent
    expanded (study.ui.view)."""
    trials = study.get_trials(deepcopy=False)
    return study_state(dict.fromkeys(name for t in trials for name in t.params), parent_run_id)


def optimization_history(study: optuna.Study) -> list[tuple[int, float, float]]:
    """(trial number, its value, the best value so far) of each complete trial, in order."""
    better = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    history: list[tuple[int, float, float]] = []
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if trial.state == optuna.trial.TrialState.COMPLETE and trial.value is not None:
            best = better(history[-1][2], trial.value) if history else trial.value
            history.append((trial.number, trial.value, best))
    return history


def log_history(client: MlflowClient, run_id: str, study: optuna.Study) -> None:
    """`trial_value` and `best_value` at step = trial number on the parent run: the UI charts
    the optimization history from them. Steps logged by an earlier session are not repeated."""
    logged = {m.step for m in client.get_metric_history(run_id, TRIAL_VALUE)}
    now_ms = int(time.time() * 1000)
    metrics = [
        Metric(name, clean_number(value), now_ms, number)
        for number, value, best in optimization_history(study)
        if number not in logged
        for name, value in ((TRIAL_VALUE, value), (BEST_VALUE, best))
    ]
    for start in range(0, len(metrics), 1000):  # MLflow's limit per batch
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def best_run_summary(
    client: MlflowClient, best_run_id: str, sweep_dir: Path
) -> tuple[dict[str, float], dict[str, str]]:
    """The best trial's final metrics (best_val_loss, best_epoch, test/...) and verdict, for
    the parent's row in the runs table; its curves.png drawn if it has none (its packed
    worker's helper failed to draw it)."""
    try:
        run = client.get_run(best_run_id)
    except MlflowException:
        return {}, {}
    metrics = {
        name: value
        for name, value in run.data.metrics.items()
        if not name.startswith(CURVE_PREFIXES)
    }
    tags: dict[str, str] = {}  # not its verdict: the parent is a study (study.sweep.story)
    artifacts = {a.path for a in client.list_artifacts(best_run_id)}
    if CURVES_ARTIFACT not in artifacts:
        with contextlib.suppress(UserError):
            draw_curves(client, run, sweep_dir / "best_trial")
    return metrics, tags


def draw_curves(client: MlflowClient, run: Run, folder: Path) -> None:
    """curves.png of a logged run, from its logged curves, as an artifact of that run."""
    compared = load_run(client, run.info.run_id, "")
    diagnosis = compared.diagnosis
    verdict = run.data.tags.get("fit", diagnosis.verdict)
    path = plot_curves(
        compared.history,
        folder / CURVES_ARTIFACT,
        title=compared.name,
        verdict=verdict,
        note=run.data.tags.get("fit.reason", diagnosis.reason),
        baseline=compared.baseline,
    )
    client.log_artifact(run.info.run_id, str(path))


def parent_note(
    client: MlflowClient,
    run_id: str,
    study: optuna.Study,
    best: optuna.trial.FrozenTrial | None,
    counts: dict[str, int],
    story: Story | None = None,
) -> str:
    """The parent run's description (markdown): the study's outcome, its trials by verdict,
    and links to its best trial, its trials best first and its story figure."""
    experiment_id = client.get_run(run_id).info.experiment_id
    history = metric_chart_url(experiment_id, run_id, (TRIAL_VALUE, BEST_VALUE))
    page = artifact_url(experiment_id, run_id, PAGE)
    # Links first: the run page shows the first lines and folds the rest.
    lines = [
        f"[Interactive plots]({page}) (history with pruned trials, parallel coordinates, "
        f"importances, every trial's curve) · [Optimization history]({history}): each "
        "trial's value and the best so far"
    ]
    if best is not None:
        best_run_id = best.user_attrs.get("mlflow_run_id", "")
        lines[0] += (
            f" · best: [trial {best.number}](#/experiments/{experiment_id}/runs/{best_run_id}),"
            f" value {best.value:.6g} · [trials, best first]"
            f"({sorted_runs_url(experiment_id, 'best_val_loss')})"
        )
    if story is not None:
        figure = (
            f" · [the best, clearest underfit and overfit trials side by side]"
            f"({artifact_url(experiment_id, run_id, STORY_FIGURE)})"
            if story.figure is not None
            else ""
        )
        lines.append(f"**This run is a study.** Its trials: {counts_line(story.counts)}{figure}")
    lines += [
        f"Optuna study **{study.study_name}**: {counts['complete']} complete, "
        f"{counts['pruned']} pruned, {counts['fail']} failed trials, one child run each. "
        "This run's metrics are its best trial's."
    ]
    return "\n\n".join(lines)

"""The end of a study: summary table, best config, Optuna's plots, all on the parent run."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient

from study.secrets import redact
from study.sweep.backends import best_trial
from study.tracking import log_metrics, set_tags

SWEEP_ONLY_KEYS = ("sweep.", "sweep=", "search", "hydra.sweep", "hydra/")
PLOTS = {
    "optimization_history": "plot_optimization_history",
    "param_importances": "plot_param_importances",
    "parallel_coordinate": "plot_parallel_coordinate",
    "intermediate_values": "plot_intermediate_values",
}


def best_config_command(trial: optuna.trial.FrozenTrial) -> str:
    """The command line that reruns a trial as a single run."""
    overrides = [
        o
        for o in trial.user_attrs.get("overrides", [])
        if not o.lstrip("+~").startswith(SWEEP_ONLY_KEYS)
    ]
    quoted = [f"'{o}'" if any(c in o for c in "[], ") else o for o in overrides]
    return "python scripts/run.py " + " ".join(redact(o) for o in quoted)


def copy_best_config(trial: optuna.trial.FrozenTrial, sweep_dir: Path) -> Path | None:
    """The best trial's resolved config, ready to run, as <sweep dir>/best_config.yaml."""
    source = Path(trial.user_attrs.get("output_dir", "")) / "config.yaml"
    if not source.is_file():
        return None
    target = sweep_dir / "best_config.yaml"
    shutil.copyfile(source, target)
    return target


def save_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optuna's matplotlib plots as PNGs; a plot the study cannot support yet is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    folder.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    if best_trial(study) is None:
        return saved  # every plot needs at least one complete trial
    for name, function in PLOTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                axes = getattr(optuna_plots, function)(study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances need two complete trials
        figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
        figure.set_size_inches(8, 5)
        path = folder / f"{name}.png"
        figure.savefig(path, dpi=80, bbox_inches="tight")
        plt.close(figure)
        saved.append(path)
    return saved


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
    best = best_trial(study)
    if best is not None:
        metrics["best_value"] = float(best.value)  # type: ignore[arg-type]
        tags = {
            "best_trial_number": str(best.number),
            "best_run_id": best.user_attrs.get("mlflow_run_id", ""),
            **{f"best.{k}": str(v) for k, v in best.params.items()},
        }
        set_tags(client, run_id, tags)
        lines.append(
            f"best value {best.value:.6g} (trial {best.number}, run "
            f"{best.user_attrs.get('mlflow_run_id', '?')})"
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
    log_metrics(client, run_id, metrics)
    for path in save_plots(study, sweep_dir / "plots"):
        client.log_artifact(run_id, str(path), "plots")
    return "\n".join(lines)

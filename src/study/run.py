"""One tracked run: train a checked config and record everything needed to rerun it."""

from __future__ import annotations

import functools
import importlib.metadata
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from study.config import resolved_config
from study.diagnosis import PRUNED, pruned
from study.fit_result import FitResult
from study.markers import CHART, marker_series
from study.packing import fit_packed, is_packed
from study.paths import PROJECT_ROOT
from study.plots import plot_curves
from study.prepare import PreparedData, prepare_data
from study.run_log import RunLog
from study.secrets import redact
from study.tracking import (
    CONFIG_ARTIFACT,
    NOTE_TAG,
    Store,
    metric_chart_url,
    run_params,
    tracked_run,
)

if TYPE_CHECKING:
    from pytorch_lightning.callbacks import Callback

OVERRIDES_ARTIFACT = "overrides.yaml"
CURVES_FIGURE = "curves.png"


@dataclass
class RunOutcome:
    run_id: str
    experiment_id: str
    result: FitResult


@functools.cache
def environment_tags() -> dict[str, str]:
    """Code and library versions: what a rerun must match to reproduce the numbers."""
    import hydra
    import mlflow
    import optuna

    # Module versions, not distribution metadata: mlflow may come as mlflow-skinny. Lightning's
    # from its metadata: importing it takes seconds, and a packed run never does.
    modules = {"torch": torch, "optuna": optuna, "mlflow": mlflow, "hydra-core": hydra}
    tags = {f"version.{name}": str(module.__version__) for name, module in modules.items()}
    tags["version.pytorch-lightning"] = importlib.metadata.version("pytorch-lightning")
    try:
        commit = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        tags["mlflow.source.git.commit"] = commit
        tags["git.dirty"] = str(bool(dirty)).lower()
    except (OSError, subprocess.SubprocessError):
        tags["mlflow.source.git.commit"] = "unknown"
    return tags


def write_config_files(cfg: DictConfig, overrides: Sequence[str], output_dir: Path) -> list[Path]:
    """The resolved config and the command-line overrides, with credentials masked."""
    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = output_dir / CONFIG_ARTIFACT
    config_path.write_text(redact(OmegaConf.to_yaml(cfg)))
    overrides_path = output_dir / OVERRIDES_ARTIFACT
    overrides_path.write_text(yaml.safe_dump([redact(item) for item in overrides]))
    return [config_path, overrides_path]


def run_one(
    cfg: DictConfig,
    output_dir: Path,
    overrides: Sequence[str] = (),
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    callbacks: Sequence[Callback] = (),
    store: Store | None = None,
    outcome_tags: Callable[[], Mapping[str, str]] | None = None,
) -> RunOutcome:
    """Train `cfg` (already checked by study.config.validate) as one MLflow run; the run ends
    FINISHED, or FAILED/KILLED on any error.

    `outcome_tags`, asked once training has ended, adds tags that only the end can tell (a
    trial's state) to the run's final write.
    """
    cfg = resolved_config(cfg)
    store = store or Store.from_config(cfg.tracking.uri)
    prepared = prepare_data(cfg)  # bad data fails here, before the store is opened
    client = store.client()
    experiment_id = store.experiment_id(client, cfg.tracking.experiment)
    config_files = write_config_files(cfg, overrides, output_dir)
    with (
        tracked_run(
            client, experiment_id, run_name, run_tags(cfg, tags), run_params(cfg), parent_run_id
        ) as run_id,
        metrics_log_for(cfg, client, run_id) as metrics_logger,
    ):
        result = train(cfg, output_dir, metrics_logger, callbacks, prepared)
        outcome = outcome_tags() if outcome_tags else {}
        judge(result, outcome)
        record_result(
            client,
            RunOutcome(run_id, experiment_id, result),
            metrics_logger,
            [*config_files, plot_run(cfg, result, output_dir, run_name)],
            outcome,
        )
    return RunOutcome(run_id, experiment_id, result)


# Lightning takes seconds to import: only a run that trains with it (not a packed one) does.
def metrics_log_for(cfg: DictConfig, client: MlflowClient, run_id: str) -> RunLog:
    """The run's metrics log: a Lightning callback that sends each epoch as it ends, or, for
    a packed run, a log that gets the whole curve when training ends."""
    flush_every_s = float(cfg.tracking.flush_every_s)
    if is_packed(cfg):
        return RunLog(client, run_id, flush_every_s)
    from study.callbacks import MetricsLogger

    return MetricsLogger(client, run_id, flush_every_s)


def train(
    cfg: DictConfig,
    output_dir: Path,
    metrics_logger: RunLog,
    callbacks: Sequence[Callback],
    prepared: PreparedData,
) -> FitResult:
    """`cfg` trained by its engine: Lightning's fit, or a pack of one (`trainer.engine`)."""
    if is_packed(cfg):
        return fit_packed(cfg, output_dir, prepared)
    from study.callbacks import MetricsLogger
    from study.train import fit

    assert isinstance(metrics_logger, MetricsLogger)  # made by metrics_log_for for this engine
    return fit(cfg, output_dir, [metrics_logger, *callbacks], prepared)


def run_tags(cfg: DictConfig, tags: Mapping[str, str] | None) -> dict[str, str]:
    """A run's tags at its start: code, versions, seed and threads, and the caller's."""
    return {
        **environment_tags(),
        "seed": str(cfg.seed),
        "torch.threads": str(torch.get_num_threads()),
        **(tags or {}),
    }


def plot_run(cfg: DictConfig, result: FitResult, output_dir: Path, run_name: str | None) -> Path:
    """curves.png: the run's curves, titled with its verdict."""
    return plot_curves(
        result.history,
        output_dir / CURVES_FIGURE,
        title=run_name or f"{cfg.model._target_.rsplit('.', 1)[-1]}",
        verdict=result.diagnosis.verdict,
        note=result.diagnosis.reason,
        baseline=result.baseline_loss,
    )


def judge(result: FitResult, outcome: Mapping[str, str]) -> None:
    """A trial its pruner stopped is labelled pruned: its cut curve is not judged."""
    if outcome.get("trial_state") == "PRUNED" and outcome.get("reason") == PRUNED:
        result.diagnosis = pruned(result.diagnosis, result.stopped_epoch)


def run_note(run: RunOutcome, figure: str | None = None) -> str:
    """The run's description (markdown, shown on its page): its verdict and why, where the
    best epoch was and where training stopped, marked on one chart of its curves, and the
    marked `figure` among its artifacts, if it has one."""
    result, diagnosis = run.result, run.result.diagnosis
    chart = metric_chart_url(run.experiment_id, run.run_id, CHART)
    drawn = f"; drawn in {figure} (Artifacts)" if figure else ""
    # The link comes first: the run page shows the first lines and folds the rest.
    return (
        f"**fit: {diagnosis.verdict}** · [train/loss and val/loss on one chart, best epoch "
        f"marked]({chart})\n\n{diagnosis.reason}\n\n"
        f"Best epoch {result.best_epoch} (val/loss {result.best_val_loss:.4g}), "
        f"training stopped at epoch {result.stopped_epoch}: on the chart, the vertical lines "
        f"marker/best_epoch and marker/stopped, and marker/best_val_loss, a flat line at the "
        f"best val/loss from the best epoch on{drawn}."
    )


def record_result(
    client: MlflowClient,
    run: RunOutcome,
    metrics_logger: RunLog,
    artifacts: Sequence[Path] | Path,
    outcome_tags: Mapping[str, str],
) -> None:
    """The artifacts, then the curve's last epochs, the final metrics and the tags in one write:
    last, so that a run whose artifacts failed carries no outcome.

    `artifacts` is the files to log, or a folder that holds nothing else (a packed trial's,
    checkpoint included): then one call logs it all, ~3 ms less per run than a call per file.
    """
    run_id, result = run.run_id, run.result
    logged = artifacts.iterdir() if isinstance(artifacts, Path) else artifacts
    figure = CURVES_FIGURE if any(p.name == CURVES_FIGURE for p in logged) else None
    if isinstance(artifacts, Path):
        client.log_artifacts(run_id, str(artifacts))
    else:
        for path in artifacts:
            client.log_artifact(run_id, str(path))
        if result.checkpoint is not None:
            client.log_artifact(run_id, str(result.checkpoint), "checkpoints")
    metrics_logger.finish(
        result.summary(),
        tags={
            "data.fingerprint": result.data_fingerprint,
            "device": result.device,
            "fit": result.diagnosis.verdict,
            "fit.reason": result.diagnosis.reason,
            NOTE_TAG: run_note(run, figure),
            **outcome_tags,
        },
        history=result.history,
        series=marker_series(result.history),
    )

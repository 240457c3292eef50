"""One tracked run's lifecycle, the same for a single run, a one-at-a-time trial and a packed
member: opened (config files, the MLflow run, its metrics log), trained by an engine, closed
(verdict, figure, artifacts, final metrics and tags, terminal status)."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import torch
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from study.config import resolved_config
from study.data import PreparedData, prepare_data
from study.diagnosis import pruned
from study.epochs import PRUNED, EpochReport, FitResult
from study.markers import CHART, marker_series
from study.packed import fit_packed, is_packed
from study.paths import PROJECT_ROOT
from study.plots import plot_curves
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


@dataclass(frozen=True)
class RunPlace:
    """Where a run is recorded: its store's client, its experiment, and its parent run."""

    client: MlflowClient
    experiment_id: str
    parent_run_id: str | None = None


class OpenRun(contextlib.AbstractContextManager["OpenRun"]):
    """A tracked run from its opening to its terminal status.

    Opened: its config files written, its MLflow run created with tags and params, its metrics
    log ready (`log`). Then either `close` (the result recorded, FINISHED) or `abort` (the
    error tag, FAILED, or KILLED on Ctrl-C); leaving a `with` block unclosed aborts it.
    """

    def __init__(
        self,
        place: RunPlace,
        cfg: DictConfig,
        output_dir: Path,
        overrides: Sequence[str] = (),
        *,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        owns_folder: bool = False,
    ) -> None:
        """`owns_folder`: `output_dir` holds nothing but this run's files (a trial's folder),
        so one call logs it all, ~3 ms less per run than a call per file."""
        self.place = place
        self.cfg = cfg
        self.output_dir = output_dir
        self.run_name = run_name
        self.owns_folder = owns_folder
        self.config_files = write_config_files(cfg, overrides, output_dir)
        self._stack = contextlib.ExitStack()
        client = place.client
        self.run_id: str = self._stack.enter_context(
            tracked_run(
                client,
                place.experiment_id,
                run_name,
                run_tags(cfg, tags),
                run_params(cfg, overrides),
                place.parent_run_id,
            )
        )
        self.log = RunLog(client, self.run_id, float(cfg.tracking.flush_every_s))
        self._stack.push(self.log)  # flushed before the run's status is set

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is not None:
            self.abort(error)

    def close(
        self, result: FitResult, outcome: Mapping[str, str], *, curves: bool = True
    ) -> RunOutcome:
        """Record `result` and end the run FINISHED: its verdict (a pruned trial labelled so),
        its curves figure (`curves`; a packed trial's is drawn off its pack's path), its
        artifacts, then its last epochs, final metrics, the markers of its early-stopping point
        and its tags in one write: last, so that a run whose artifacts failed carries no
        outcome."""
        run = RunOutcome(self.run_id, self.place.experiment_id, result)
        try:
            label_pruned(result, outcome)
            figures = (
                [plot_run(self.cfg, result, self.output_dir, self.run_name)] if curves else []
            )
            self._log_artifacts(result, figures)
            self.log.finish(
                result.summary(),
                tags={**result_tags(run, CURVES_FIGURE if curves else None), **outcome},
                history=result.history,
                series=marker_series(result.history),
            )
        except BaseException as error:
            self.abort(error)
            raise
        self._stack.close()
        return run

    def abort(self, error: BaseException) -> None:
        """End the run on `error`: its error tag and FAILED (KILLED for Ctrl-C and exits)."""
        self._stack.__exit__(type(error), error, error.__traceback__)

    def _log_artifacts(self, result: FitResult, figures: Sequence[Path]) -> None:
        client, run_id = self.place.client, self.run_id
        if self.owns_folder:
            client.log_artifacts(run_id, str(self.output_dir))
            return
        for path in [*self.config_files, *figures]:
            client.log_artifact(run_id, str(path))
        if result.checkpoint is not None:
            client.log_artifact(run_id, str(result.checkpoint), "checkpoints")


def run_one(
    cfg: DictConfig,
    output_dir: Path,
    overrides: Sequence[str] = (),
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    report: EpochReport | None = None,
    store: Store | None = None,
    outcome_tags: Callable[[FitResult], Mapping[str, str]] | None = None,
    owns_folder: bool = False,
) -> RunOutcome:
    """Train `cfg` (already checked by study.config.validate) as one MLflow run; the run ends
    FINISHED, or FAILED/KILLED on any error.

    `report` hears each epoch (a trial's pruner; it may stop training). `outcome_tags`, asked
    with the result once training has ended, adds tags that only the end can tell (a trial's
    state).
    """
    cfg = resolved_config(cfg)
    store = store or Store.from_uri(cfg.tracking.uri)
    prepared = prepare_data(cfg)  # bad data fails here, before the store is opened
    client = store.client()
    place = RunPlace(client, store.experiment_id(client, cfg.tracking.experiment), parent_run_id)
    with OpenRun(
        place, cfg, output_dir, overrides, run_name=run_name, tags=tags, owns_folder=owns_folder
    ) as run:
        result = train(cfg, output_dir, run.log, report, prepared)
        return run.close(result, outcome_tags(result) if outcome_tags else {})


def train(
    cfg: DictConfig,
    output_dir: Path,
    log: RunLog,
    report: EpochReport | None,
    prepared: PreparedData,
) -> FitResult:
    """`cfg` trained by its engine: Lightning's fit, or a pack of one (`trainer.engine`)."""
    if is_packed(cfg):
        return fit_packed(cfg, output_dir, prepared, report=report)
    from study.train import fit  # Lightning: seconds to import, and a packed run never does

    return fit(cfg, output_dir, prepared, log=log, report=report)


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


def label_pruned(result: FitResult, outcome: Mapping[str, str]) -> None:
    """A trial its pruner stopped is labelled pruned: its cut curve is not judged."""
    if outcome.get("trial_state") == "PRUNED" and outcome.get("reason") == PRUNED:
        result.diagnosis = pruned(result.diagnosis, result.stopped_epoch)


def result_tags(run: RunOutcome, figure: str | None) -> dict[str, str]:
    """What a run's result says as tags: its data, device, verdict and description."""
    result = run.result
    return {
        "data.fingerprint": result.data_fingerprint,
        "device": result.device,
        "fit": result.diagnosis.verdict,
        "fit.reason": result.diagnosis.reason,
        NOTE_TAG: run_note(run, figure),
    }


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

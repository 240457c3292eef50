"""Runs side by side: curves on shared axes, each judged from its curves, and a summary table.

Two ways in: `python scripts/run.py -m compare` (CompareCallback nests the preset runs under one
parent run and compares them at the end) and `python scripts/compare.py RUN_ID ...`
(study.cli.compare_main) for runs already in MLflow.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from study.diagnosis import CURVES, PRUNED, Diagnosis, Thresholds, diagnose_history, pruned
from study.errors import UserError
from study.plots import Panel, plot_comparison
from study.secrets import redact
from study.tracking import (
    CONFIG_ARTIFACT,
    NOTE_TAG,
    PARENT_RUN_ENV,
    Store,
    artifact_url,
    find_run,
    set_tags,
)

FIGURE = "compare.png"
TABLE = "compare.txt"


@dataclass(frozen=True)
class ComparedRun:
    run_id: str
    name: str
    history: list[dict[str, float]]
    diagnosis: Diagnosis
    baseline: float | None


def load_run(client: MlflowClient, run_id: str, store_uri: str) -> ComparedRun:
    """A run's curves from MLflow, judged with the thresholds and baseline it logged."""
    run = find_run(client, run_id, store_uri)
    name = run.data.tags.get("mlflow.runName") or run_id
    curves = {
        key: {m.step: m.value for m in client.get_metric_history(run_id, key)} for key in CURVES
    }
    epochs = sorted(set(curves["train/loss"]) & set(curves["val/loss"]))
    if not epochs:
        raise UserError(
            f"run {run_id} ({name}) has no train/loss and val/loss curves: pick runs that "
            "trained at least one epoch"
        )
    history = [
        {"epoch": float(epoch), **{key: curves[key][epoch] for key in CURVES}} for epoch in epochs
    ]
    thresholds = logged_thresholds(client, run)
    baseline = run.data.metrics.get("baseline_loss")
    diagnosis = diagnose_history(history, thresholds, baseline)
    if run.data.tags.get("fit") == PRUNED:  # its pruner cut the curve: it is not judged
        diagnosis = pruned(diagnosis, int(epochs[-1]))
    return ComparedRun(run_id, name, history, diagnosis, baseline)


def logged_thresholds(client: MlflowClient, run: Run) -> Thresholds:
    """The thresholds the run was judged with: its config.yaml's `diagnosis:` section (runs of
    older versions: their `diagnosis.*` params), else today's defaults."""
    known = {f.name for f in fields(Thresholds)}
    params = run.data.params
    logged = {
        key: yaml.safe_load(params[f"diagnosis.{key}"])
        for key in known
        if f"diagnosis.{key}" in params
    }
    with tempfile.TemporaryDirectory() as folder, contextlib.suppress(MlflowException, OSError):
        path = client.download_artifacts(run.info.run_id, CONFIG_ARTIFACT, folder)
        section = (yaml.safe_load(Path(path).read_text()) or {}).get("diagnosis") or {}
        logged = {key: value for key, value in section.items() if key in known}
    return Thresholds(**logged)


def compare_runs(
    client: MlflowClient, run_ids: Sequence[str], figure: Path, store_uri: str
) -> list[ComparedRun]:
    """Load and judge the runs, and draw them side by side into `figure`."""
    unique = list(dict.fromkeys(run_ids))
    if len(unique) < 2:
        raise UserError(f"compare needs at least two different runs, got {len(unique)}")
    runs = [load_run(client, run_id, store_uri) for run_id in unique]
    plot_comparison(
        [
            Panel(run.name, run.history, run.diagnosis.verdict, baseline=run.baseline)
            for run in runs
        ],
        figure,
    )
    return runs


def table(runs: Sequence[ComparedRun]) -> str:
    """One line per run: name, verdict, best epoch, best val loss, final gap, run id."""
    width = max(len("run"), *(len(run.name) for run in runs))
    lines = [
        f"{'run':<{width}}  {'verdict':<8}  {'best epoch':>10}  {'best val/loss':>13}  "
        f"{'final gap':>9}  run id"
    ]
    for run in runs:
        d = run.diagnosis
        lines.append(
            f"{run.name:<{width}}  {d.verdict:<8}  {d.best_epoch:>10}  "
            f"{_number(d.best_val_loss):>13}  {_number(d.gap_final):>9}  {run.run_id}"
        )
    return "\n".join(lines)


def parent_tags(runs: Sequence[ComparedRun], experiment_id: str, parent: str) -> dict[str, str]:
    """The compare parent's verdict columns and description: each run's verdict, why, and a
    link to the figure of all of them side by side."""
    verdicts = ", ".join(f"{run.name}: {run.diagnosis.verdict}" for run in runs)
    figure = artifact_url(experiment_id, parent, FIGURE)
    lines = [
        f"**{len(runs)} runs compared**: {verdicts} · [their curves side by side, best epochs "
        f"marked]({figure})",
        *(
            f"- [{run.name}](#/experiments/{experiment_id}/runs/{run.run_id}): "
            f"**{run.diagnosis.verdict}**, {run.diagnosis.reason}"
            for run in runs
        ),
    ]
    tags = {f"verdict.{run.name}": run.diagnosis.verdict for run in runs}
    return {"fit": "compare", "fit.reason": verdicts, NOTE_TAG: "\n".join(lines), **tags}


def _number(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def job_overrides(config: DictConfig) -> list[list[str]]:
    """Each job's overrides as Hydra's basic sweeper makes them: the grid over
    `hydra.sweeper.params` and the command line's sweeps (the command line wins a key)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    grid = config.hydra.sweeper.get("params") or {}
    params = [f"{key}={value}" for key, value in grid.items()]
    parsed = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
    choices: dict[str, list[str]] = {}
    for override in parsed:
        key = override.get_key_element()
        values = (
            list(override.sweep_string_iterator())
            if override.is_sweep_override()
            else [override.get_value_element_as_str()]
        )
        choices[key] = [f"{key}={value}" for value in values]
    return [list(job) for job in itertools.product(*choices.values())]


def _jobs_compose(config: DictConfig) -> bool:
    """Whether every job's config composes (each preset exists, each key is known)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from study.config import compose_config
    from study.paths import CONF_DIR

    try:
        for overrides in job_overrides(config):
            compose_config(str(CONF_DIR), config.hydra.job.config_name, overrides)
    except (HydraException, OmegaConfBaseException):
        return False
    return True


class CompareCallback(Callback):
    """Hydra callback of `-m compare`: one parent run for all jobs, compared at the end.

    Jobs find the parent in the PARENT_RUN_ENV variable. If the multirun dies before its end
    (a job raised, Ctrl-C), an exit hook still closes the parent as FAILED or KILLED.
    """

    def __init__(self) -> None:
        self.client: MlflowClient | None = None
        self.store_uri = ""
        self.parent_run_id: str | None = None
        self.sweep_dir = Path()
        self.failed_jobs = 0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from study.config import resolved_config, validate
        from study.data import prepare_data

        if not _jobs_compose(config):
            return  # no parent for jobs Hydra will refuse (an unknown preset): it says why
        cfg = OmegaConf.masked_copy(config, [str(key) for key in config if key != "hydra"])
        try:
            validate(cfg)
            cfg = resolved_config(cfg)
            prepare_data(cfg)
            store = Store.from_uri(cfg.tracking.uri)
            client = store.client()
            experiment_id = store.experiment_id(client, cfg.tracking.experiment)
        except UserError:
            return  # no parent for a command that cannot run: its jobs report the error
        self.client, self.store_uri = client, store.uri
        parent = self.client.create_run(experiment_id, run_name="compare")
        self.parent_run_id = parent.info.run_id
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        atexit.register(self._close_unfinished)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.FAILED:
            self.failed_jobs += 1

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ.pop(PARENT_RUN_ENV, None)
        if self.client is None or self.parent_run_id is None:
            return
        atexit.unregister(self._close_unfinished)
        client, parent = self.client, self.parent_run_id
        children = client.search_runs(
            [client.get_run(parent).info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent}'",
            order_by=["attributes.start_time ASC"],
        )
        figure = self.sweep_dir / FIGURE
        try:
            runs = compare_runs(client, [r.info.run_id for r in children], figure, self.store_uri)
        except UserError as error:
            client.set_tag(parent, "error", redact(str(error)))
            client.set_terminated(parent, "FAILED")
            print(f"error: {redact(str(error))}", file=sys.stderr)
            # Hydra turns a callback's exceptions into warnings; SystemExit still ends the
            # command with the exit code of bad input (e.g. a sweep left with one preset).
            raise SystemExit(error.exit_code) from error
        summary = table(runs)
        client.log_artifact(parent, str(figure))
        client.log_text(parent, summary + "\n", TABLE)
        experiment_id = client.get_run(parent).info.experiment_id
        set_tags(client, parent, parent_tags(runs, experiment_id, parent))
        client.set_terminated(parent, "FINISHED")
        print(f"\ncompare run {parent}: {figure}\n{summary}")

    def _close_unfinished(self) -> None:
        if self.client is not None and self.parent_run_id is not None:
            status = "FAILED" if self.failed_jobs else "KILLED"
            # At exit the store may be gone too; there is no one left to report that to.
            with contextlib.suppress(Exception):
                self.client.set_terminated(self.parent_run_id, status)

"""A claimed trial from start to end: sampled, its config built, trained as one run, told."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from study.config import compose_config
from study.epochs import DIVERGED, PRUNED, FitResult
from study.run import run_one
from study.secrets import redact
from study.sweep.claims import TrialHeartbeat, run_name
from study.sweep.space import Param, set_values, trial_base_config
from study.sweep.spec import Event, Finished, Started, WorkerSpec, encode_event
from study.tracking import Store


@dataclass(frozen=True)
class TrialStart:
    """A claimed trial, sampled: its run config, overrides, folder and run tags."""

    cfg: DictConfig
    overrides: list[str]
    output_dir: Path
    tags: dict[str, str]


COMPLETE, PRUNED_STATE, FAIL = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.PRUNED,
    optuna.trial.TrialState.FAIL,
)


_EMITTING = threading.Lock()  # a packed worker's writer thread emits too


class TrialReport:
    """A trial's report to its pruner each epoch, whichever engine trains it: the best value of
    the study's metric so far, and PRUNED when the pruner says stop (DIVERGED when the metric
    is not finite)."""

    def __init__(self, trial: optuna.Trial, metric: str, maximize: bool, prune: bool) -> None:
        self.trial = trial
        self.metric = metric
        self.maximize = maximize
        self.prune = prune  # without a pruner, asking costs a storage round trip per epoch
        self.best: float | None = None

    def __call__(self, row: Mapping[str, float]) -> str | None:
        value = row.get(self.metric, math.nan)
        if not math.isfinite(value):
            return DIVERGED
        if self.best is None or (value > self.best if self.maximize else value < self.best):
            self.best = value
        self.trial.report(self.best, step=int(row["epoch"]))
        if self.prune and self.trial.should_prune():
            return PRUNED
        return None

    def outcome(self, stop_reason: str | None) -> dict[str, str]:
        """How the trial ended, as its run's tags: PRUNED (by its pruner, or diverged),
        COMPLETE, or FAIL when its metric was never logged."""
        if stop_reason in (PRUNED, DIVERGED):
            return {"trial_state": "PRUNED", "reason": stop_reason}
        if self.best is None:
            return {"trial_state": "FAIL", "reason": f"metric {self.metric!r} was never logged"}
        return {"trial_state": "COMPLETE"}

    def end(self, stop_reason: str | None) -> tuple[optuna.trial.TrialState, float | None]:
        """The trial's state and value to tell the study; RuntimeError when its metric was
        never logged."""
        outcome = self.outcome(stop_reason)
        if outcome["trial_state"] == "FAIL":
            raise RuntimeError(outcome["reason"])
        if outcome["trial_state"] == "PRUNED":
            return PRUNED_STATE, None
        return COMPLETE, self.best


class ParentGone(SystemExit):
    """The sweep's parent closed its end of the events pipe: exit quietly, runs closed KILLED
    (nobody is left to report to; the next session fails the trials left RUNNING)."""


class TrialRunner:
    def __init__(self, spec: WorkerSpec, index: int, events_fd: int) -> None:
        self.spec = spec
        self.index = index
        self.events_fd = events_fd
        self.base = OmegaConf.create(spec.base_config)
        self.store = Store.from_uri(spec.tracking_uri)
        self.client = self.store.client()

    def emit(self, event: Event) -> None:
        # Unbuffered: nothing is left to flush (and fail) at exit once the parent is gone. A
        # line over the pipe's atomic size (a trial's curves) must not interleave with another.
        try:
            with _EMITTING:
                os.write(self.events_fd, (encode_event(event) + "\n").encode())
        except BrokenPipeError:
            raise ParentGone(f"worker {self.index}: the sweep's parent is gone: exiting") from None

    def trial_config(self, values: list[tuple[Param, Any]]) -> DictConfig:
        """The trial's run config: the study's base config with the sampled values set.

        A sampled config group (e.g. `optimizer=sgd`) changes whole sections: only then is the
        config composed again (~0.15 s).
        """
        groups = [param.override(value) for param, value in values if param.is_group]
        base = self.base
        if groups:
            composed = compose_config(
                self.spec.settings.conf_dir,
                self.spec.settings.config_name,
                [*self.spec.settings.overrides, *groups],
            )
            base = trial_base_config(composed, self.spec.settings.study_name)
        return set_values(base, values)

    def start(self, trial: optuna.Trial) -> TrialStart:
        """Sample the claimed `trial` and say so: the parent now counts it as this worker's."""
        self.emit(Started(trial.number))
        trial.set_user_attr("device", os.environ.get("CUDA_VISIBLE_DEVICES") or "cpu")
        values = [(param, param.suggest(trial)) for param in self.spec.settings.params]
        overrides = [
            *self.spec.settings.overrides,
            *(param.override(value) for param, value in values),
        ]
        trial.set_user_attr("overrides", [redact(item) for item in overrides])  # no passwords
        output_dir = Path(self.spec.sweep_dir) / f"trial_{trial.number}"
        trial.set_user_attr("output_dir", str(output_dir))
        tags = {
            "study": self.spec.settings.study_name,
            "trial_number": str(trial.number),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "worker": str(self.index),
        }
        return TrialStart(self.trial_config(values), overrides, output_dir, tags)

    def report(self, trial: optuna.Trial) -> TrialReport:
        spec = self.spec
        return TrialReport(
            trial,
            spec.settings.metric,
            spec.settings.direction == "maximize",
            spec.settings.pruner != "none",
        )

    def objective(self, trial: optuna.Trial) -> tuple[optuna.trial.TrialState, float | None]:
        """Train the claimed `trial` as one run; its state and value."""
        start = self.start(trial)
        report = self.report(trial)
        outcome = run_one(
            start.cfg,
            start.output_dir,
            start.overrides,
            run_name=run_name(trial.number, self.spec.settings.n_trials),
            parent_run_id=self.spec.parent_run_id,
            tags=start.tags,
            report=report,
            store=self.store,
            outcome_tags=lambda result: report.outcome(result.stop_reason),
            owns_folder=True,
        )
        note_run(trial, outcome.run_id, outcome.result)
        return report.end(outcome.result.stop_reason)

    def run(
        self, study: optuna.Study, storage: optuna.storages.BaseStorage, trial: optuna.Trial
    ) -> None:
        """Run a claimed trial to its end and tell the study and the parent how it ended."""
        heartbeat = TrialHeartbeat(storage, study, trial)
        state, value = FAIL, None
        try:
            state, value = self.objective(trial)
        except Exception as error:  # the study goes on; the run holds the error tag
            note_failure(trial, error)
        finally:
            heartbeat.stop()
            self.finish(study, trial, state, value)

    def finish(
        self,
        study: optuna.Study,
        trial: optuna.Trial,
        state: optuna.trial.TrialState,
        value: float | None,
    ) -> None:
        """Tell the study how `trial` ended, and the parent."""
        with contextlib.suppress(ValueError, RuntimeError):  # already failed as stale
            study.tell(
                trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state
            )
        frozen = study.get_trials(deepcopy=False)[trial.number]
        self.emit(
            Finished(
                number=trial.number,
                state=frozen.state.name,
                value=frozen.value,
                run_id=frozen.user_attrs.get("mlflow_run_id"),
                device=frozen.user_attrs.get("device"),
                epochs=frozen.user_attrs.get("epochs"),
            )
        )


def note_run(trial: optuna.Trial, run_id: str, result: FitResult) -> None:
    """The trial's MLflow run and how it trained, on the trial."""
    trial.set_user_attr("mlflow_run_id", run_id)
    trial.set_user_attr("device", result.device)
    trial.set_user_attr("epochs", result.stopped_epoch)
    trial.set_user_attr("fit_seconds", round(result.fit_seconds, 4))


def note_failure(trial: optuna.Trial, error: BaseException) -> None:
    """Why the trial failed, on the trial and in the worker's log."""
    trial.set_user_attr("fail_reason", redact(repr(error))[:1000])
    print(f"trial {trial.number} failed: {redact(repr(error))}", file=sys.stderr)

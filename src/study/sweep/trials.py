"""A claimed trial from start to end: sampled, its config built, trained as one run, told."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from study.config import compose_config
from study.fit_result import FitResult
from study.run import run_one
from study.secrets import redact
from study.sweep.claims import TrialHeartbeat
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


class ParentGone(SystemExit):
    """The sweep's parent closed its end of the events pipe: exit quietly, runs closed KILLED
    (nobody is left to report to; the next session fails the trials left RUNNING)."""


class TrialRunner:
    def __init__(self, spec: WorkerSpec, index: int, events_fd: int) -> None:
        self.spec = spec
        self.index = index
        self.events_fd = events_fd
        self.base = OmegaConf.create(spec.base_config)
        self.store = Store.from_config(spec.tracking_uri)
        self.client = self.store.client()

    def emit(self, event: Event) -> None:
        # Unbuffered: nothing is left to flush (and fail) at exit once the parent is gone.
        try:
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
                self.spec.conf_dir, self.spec.config_name, [*self.spec.overrides, *groups]
            )
            base = trial_base_config(composed, self.spec.study_name)
        return set_values(base, values)

    def start(self, trial: optuna.Trial) -> TrialStart:
        """Sample the claimed `trial` and say so: the parent now counts it as this worker's."""
        self.emit(Started(trial.number))
        trial.set_user_attr("device", os.environ.get("CUDA_VISIBLE_DEVICES") or "cpu")
        values = [(param, param.suggest(trial)) for param in self.spec.params]
        overrides = [*self.spec.overrides, *(param.override(value) for param, value in values)]
        trial.set_user_attr("overrides", [redact(item) for item in overrides])  # no passwords
        output_dir = Path(self.spec.sweep_dir) / f"trial_{trial.number}"
        trial.set_user_attr("output_dir", str(output_dir))
        tags = {
            "study": self.spec.study_name,
            "trial_number": str(trial.number),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "worker": str(self.index),
        }
        return TrialStart(self.trial_config(values), overrides, output_dir, tags)

    def objective(self, trial: optuna.Trial) -> float:
        from study.callbacks import TrialReporter  # Lightning: packed workers never import it

        start = self.start(trial)
        cfg, overrides, output_dir, tags = start.cfg, start.overrides, start.output_dir, start.tags
        reporter = TrialReporter(
            trial,
            self.spec.metric,
            self.spec.direction == "maximize",
            float(cfg.get("diagnosis", {}).get("diverge_level", 3.0)),
            self.spec.pruner != "none",
        )
        outcome = run_one(
            cfg,
            output_dir,
            overrides,
            run_name=run_name(trial.number, self.spec.n_trials),
            parent_run_id=self.spec.parent_run_id,
            tags=tags,
            callbacks=[reporter],
            store=self.store,
            outcome_tags=reporter.outcome_tags,
        )
        note_run(trial, outcome.run_id, outcome.result)
        if reporter.stop_reason is not None:
            raise optuna.TrialPruned(reporter.stop_reason)
        if reporter.best is None:
            raise RuntimeError(f"metric {self.spec.metric!r} was never logged")
        return reporter.best

    def run(
        self, study: optuna.Study, storage: optuna.storages.BaseStorage, trial: optuna.Trial
    ) -> None:
        """Run a claimed trial to its end and tell the study and the parent how it ended."""
        heartbeat = TrialHeartbeat(storage, study, trial)
        state, value = optuna.trial.TrialState.FAIL, None
        try:
            value = self.objective(trial)
            state = optuna.trial.TrialState.COMPLETE
        except optuna.TrialPruned:
            state = optuna.trial.TrialState.PRUNED
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


def run_name(number: int, n_trials: int) -> str:
    """`trial 007`: padded to the digits of n_trials, so names sort as numbers do."""
    return f"trial {number:0{len(str(max(n_trials - 1, 0)))}d}"


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

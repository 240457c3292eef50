"""A sweep worker process: `python -m study.sweep.worker SPEC INDEX EVENTS_FD`.

Loads the study once, then runs one trial per "trial" line on stdin until "stop" or EOF,
reporting each trial to the parent as an event (study.sweep.spec) on EVENTS_FD. Imports (torch,
Lightning, MLflow: ~5 s) are paid once per worker, not once per trial.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import optuna
import torch
from omegaconf import DictConfig, OmegaConf

from study.callbacks import TrialReporter
from study.config import compose_config
from study.errors import report
from study.run import run_one
from study.secrets import redact
from study.sweep.backends import StudyLock, make_pruner, make_sampler, make_storage
from study.sweep.claims import TrialHeartbeat, claim_trial
from study.sweep.recovery import StaleTrialCallback
from study.sweep.space import Param, set_values, trial_base_config
from study.sweep.spec import Event, Exhausted, Finished, Ready, Started, WorkerSpec, encode_event
from study.tracking import Store


class ParentGone(SystemExit):
    """The sweep's parent closed its end of the events pipe: exit quietly, runs closed KILLED
    (nobody is left to report to; the next session fails the trial left RUNNING)."""


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

    def objective(self, trial: optuna.Trial) -> float:
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
        cfg = self.trial_config(values)
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
            run_name=f"trial {trial.number}",
            parent_run_id=self.spec.parent_run_id,
            tags=tags,
            callbacks=[reporter],
            store=self.store,
            outcome_tags=reporter.outcome_tags,
        )
        trial.set_user_attr("mlflow_run_id", outcome.run_id)
        trial.set_user_attr("device", outcome.result.device)
        trial.set_user_attr("epochs", outcome.result.stopped_epoch)
        trial.set_user_attr("fit_seconds", round(outcome.result.fit_seconds, 4))
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
            trial.set_user_attr("fail_reason", redact(repr(error))[:1000])
            print(f"trial {trial.number} failed: {redact(repr(error))}", file=sys.stderr)
        finally:
            heartbeat.stop()
            with contextlib.suppress(ValueError, RuntimeError):  # already failed as stale
                study.tell(
                    trial,
                    value if state == optuna.trial.TrialState.COMPLETE else None,
                    state=state,
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


def main(argv: list[str]) -> int:
    spec_path, index, events_fd = Path(argv[0]), int(argv[1]), int(argv[2])
    spec = WorkerSpec.read(spec_path)
    torch.set_num_threads(int(os.environ.get("STUDY_WORKER_THREADS", "1")))
    # The parent stops workers with SIGTERM: unwind like Ctrl-C so runs are closed KILLED.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    die_with_parent()
    try:
        runner = TrialRunner(spec, index, events_fd)
        on_stale = StaleTrialCallback(
            runner.client, spec.experiment_id, spec.parent_run_id, spec.retries
        )
        storage = make_storage(spec.storage, spec.heartbeat_s, on_stale)
        study = optuna.load_study(
            study_name=spec.study_name,
            storage=storage,
            sampler=make_sampler(spec.sampler, spec.seed + index),
            pruner=make_pruner(spec.pruner, spec.max_epochs),
        )
        lock = StudyLock(spec.storage, spec.study_name)
        runner.emit(Ready())
        for line in sys.stdin:
            if line.strip() != "trial":
                break
            trial = claim_trial(study, storage, spec.n_trials, lock)
            if trial is None:
                runner.emit(Exhausted())
                break
            runner.run(study, storage, trial)
    finally:
        os.close(events_fd)
    return 0


def die_with_parent() -> None:
    """Linux: get SIGTERM when the sweep's parent dies, instead of training on as an orphan."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as error:  # UserError: one line; anything else: a traceback, masked
        sys.exit(report(error))

"""A sweep worker process: `python -m study.worker SPEC INDEX EVENTS_FD`.

Loads the study once, then runs one trial per "trial" line on stdin until "stop" or EOF,
reporting each trial to the parent as a JSON line on EVENTS_FD. Imports (torch, Lightning,
MLflow: ~5 s) are paid once per worker, not once per trial.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import IO, Any

import optuna
import pytorch_lightning as pl
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from study.compose import compose_config
from study.errors import report
from study.experiment import run_one
from study.paths import redact
from study.quota import HeartbeatThread, StudyLock, claim_trial
from study.recovery import StaleTrialCallback
from study.search import Param, make_pruner, make_sampler, make_storage
from study.tasks import epoch_history
from study.tracking import Store


class TrialReporter(pl.Callback):
    """Reports the best value so far each epoch so the pruner can stop a hopeless trial.

    A pruned or diverged trial stops like an early-stopped one (`should_stop`), so its run is
    closed normally with its whole curve logged; the objective then tells Optuna it was pruned.
    """

    def __init__(
        self,
        trial: optuna.Trial,
        metric: str,
        maximize: bool,
        diverge_level: float = 3.0,
        prune: bool = True,
    ) -> None:
        self.trial = trial
        self.metric = metric
        self.maximize = maximize
        self.diverge_level = diverge_level
        self.prune = prune  # without a pruner, asking costs a storage round trip per epoch
        self.best: float | None = None
        self.stop_reason: str | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        row = epoch_history(pl_module)[-1]
        value = row.get(self.metric, math.nan)
        # Exploding (the diagnosis's diverge_level x a constant predictor's loss) or NaN.
        limit = self.diverge_level * getattr(pl_module, "baseline_loss", math.nan)
        exploded = math.isfinite(limit) and row["train/loss"] > limit
        if exploded or not math.isfinite(row["train/loss"]) or not math.isfinite(value):
            self.stop_reason = "diverged"
            trainer.should_stop = True
            return
        if self.best is None or (value > self.best if self.maximize else value < self.best):
            self.best = value
        self.trial.report(self.best, step=int(row["epoch"]))
        if self.prune and self.trial.should_prune():
            self.stop_reason = "pruned"
            trainer.should_stop = True

    def outcome_tags(self) -> dict[str, str]:
        """How the trial ended, for its run's final write."""
        if self.stop_reason is not None:
            return {"trial_state": "PRUNED", "reason": self.stop_reason}
        if self.best is None:
            return {"trial_state": "FAIL", "reason": f"metric {self.metric!r} was never logged"}
        return {"trial_state": "COMPLETE"}


class TrialRunner:
    def __init__(self, spec: dict[str, Any], index: int, events: IO[str]) -> None:
        self.spec = spec
        self.index = index
        self.events = events
        self.params = [
            Param(
                p["path"],
                optuna.distributions.json_to_distribution(p["distribution"]),
                p["is_group"],
            )
            for p in spec["params"]
        ]
        self._base: DictConfig | None = None
        self.store = Store.from_config(spec["tracking_uri"])
        self.client = self.store.client()

    def emit(self, **event: Any) -> None:
        self.events.write(json.dumps(event) + "\n")
        self.events.flush()

    def compose_trial(self, sampled: list[str]) -> DictConfig:
        """The trial's run config: the study's base config with the sampled values set.

        Composing with Hydra costs ~0.15 s, so it happens once per worker; a trial re-composes
        only when it picks a config group (e.g. `optimizer=sgd`), which changes whole sections.
        """
        if any(param.is_group for param in self.params):
            return self._composed([*self.spec["overrides"], *sampled])
        if self._base is None:
            self._base = self._composed(self.spec["overrides"])
        trial_cfg = copy.deepcopy(self._base)
        for override in OverridesParser.create().parse_overrides(sampled):
            OmegaConf.update(trial_cfg, override.key_or_group, override.value(), merge=False)
        return trial_cfg

    def _composed(self, overrides: list[str]) -> DictConfig:
        cfg = compose_config(self.spec["conf_dir"], self.spec["config_name"], overrides)
        plain = OmegaConf.to_container(cfg, resolve=False)
        assert isinstance(plain, dict)
        for section in ("sweep", "search", "hydra"):
            plain.pop(section, None)
        trial_cfg = OmegaConf.create(plain)
        trial_cfg.tracking.experiment = self.spec["study_name"]
        return trial_cfg

    def objective(self, trial: optuna.Trial) -> float:
        self.emit(event="started", number=trial.number)
        trial.set_user_attr("device", os.environ.get("CUDA_VISIBLE_DEVICES") or "cpu")
        sampled = [param.suggest(trial) for param in self.params]
        overrides = [*self.spec["overrides"], *sampled]
        trial.set_user_attr("overrides", [redact(item) for item in overrides])  # no passwords
        output_dir = Path(self.spec["sweep_dir"]) / f"trial_{trial.number}"
        trial.set_user_attr("output_dir", str(output_dir))
        maximize = self.spec["direction"] == "maximize"
        tags = {
            "study": self.spec["study_name"],
            "trial_number": str(trial.number),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "worker": str(self.index),
        }
        cfg = self.compose_trial(sampled)
        diverge_level = float(cfg.get("diagnosis", {}).get("diverge_level", 3.0))
        reporter = TrialReporter(
            trial, self.spec["metric"], maximize, diverge_level, self.spec["pruner"] != "none"
        )
        outcome = run_one(
            cfg,
            output_dir,
            overrides,
            run_name=f"trial {trial.number}",
            parent_run_id=self.spec["parent_run_id"],
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
            raise RuntimeError(f"metric {self.spec['metric']!r} was never logged")
        return reporter.best

    def run(self, study: optuna.Study, trial: optuna.Trial) -> None:
        """Run a claimed trial to its end and tell the study and the parent how it ended."""
        heartbeat = HeartbeatThread(study, trial)
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
            event="finished",
            number=trial.number,
            state=frozen.state.name,
            value=frozen.value,
            run_id=frozen.user_attrs.get("mlflow_run_id"),
            device=frozen.user_attrs.get("device"),
            epochs=frozen.user_attrs.get("epochs"),
        )


def main(argv: list[str]) -> int:
    spec_path, index, events_fd = Path(argv[0]), int(argv[1]), int(argv[2])
    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(int(os.environ.get("STUDY_WORKER_THREADS", "1")))
    # The parent stops workers with SIGTERM: unwind like Ctrl-C so runs are closed KILLED.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    die_with_parent()
    with os.fdopen(events_fd, "w", buffering=1) as events:
        runner = TrialRunner(spec, index, events)
        on_stale = StaleTrialCallback(
            runner.client, spec["experiment_id"], spec["parent_run_id"], spec["retries"]
        )
        study = optuna.load_study(
            study_name=spec["study_name"],
            storage=make_storage(spec["storage"], spec["heartbeat_s"], on_stale),
            sampler=make_sampler(spec["sampler"], spec["seed"] + index),
            pruner=make_pruner(spec["pruner"], spec["max_epochs"]),
        )
        lock = StudyLock(spec["storage"], spec["study_name"])
        runner.emit(event="ready")
        for line in sys.stdin:
            if line.strip() != "trial":
                break
            trial = claim_trial(study, spec["n_trials"], lock)
            if trial is None:
                runner.emit(event="exhausted")
                break
            runner.run(study, trial)
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

"""A worker's trials trained `sweep.pack` at a time as one packed model (study.packed).

Each trial is claimed and sampled as in a one-at-a-time worker, becomes a member of the pack,
reports its best value to the pruner every epoch, and gets its own MLflow child run with its
curves, metrics, verdict and artifacts when it ends; its slot then takes the study's next trial
at the next epoch boundary, so the pack stays full until the study runs out of trials.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig

from study.config import resolved_config
from study.curves_writer import CurvesJob, CurvesWriter
from study.packed import Member, PackHooks, train_pack
from study.packing import PACKED, arch_of, diverge_level, member_of, packed_result
from study.prepare import PreparedData, prepare_data
from study.run import (
    CURVES_FIGURE,
    RunOutcome,
    judge,
    record_result,
    run_note,
    run_tags,
    write_config_files,
)
from study.run_log import RunLog, trial_outcome
from study.sweep.claims import TrialHeartbeat
from study.sweep.trials import TrialRunner, note_failure, note_run, run_name
from study.tracking import run_params, tracked_run

COMPLETE, PRUNED, FAIL = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.PRUNED,
    optuna.trial.TrialState.FAIL,
)


@dataclass
class PackedTrial:
    """A trial while it trains in the pack: its run stays open until the trial ends."""

    trial: optuna.Trial
    cfg: DictConfig
    output_dir: Path
    run: contextlib.ExitStack  # the MLflow run (tracked_run) and its metrics logger
    run_id: str
    metrics_logger: RunLog
    heartbeat: TrialHeartbeat
    started: float
    best: float | None = None


class PackRunner:
    def __init__(
        self,
        runner: TrialRunner,
        study: optuna.Study,
        storage: optuna.storages.BaseStorage,
        next_trial: Callable[[bool], optuna.Trial | None],
    ) -> None:
        self.runner = runner
        self.spec = runner.spec
        self.study = study
        self.storage = storage
        self.next_trial = next_trial
        self.maximize = self.spec.direction == "maximize"
        self.base = resolved_config(runner.base)
        self.running: dict[int, PackedTrial] = {}

    def run(self) -> None:
        try:
            self.prepared: PreparedData = prepare_data(self.base)  # every member's data
            self.experiment_id = self.runner.store.experiment_id(
                self.runner.client, self.spec.study_name
            )
        except Exception as error:  # as one at a time: each trial fails, saying why
            while (trial := self.next_trial(True)) is not None:
                self._fail(trial, error)
            return
        splits = self.prepared.splits
        self.curves = CurvesWriter(self.runner.store.uri)
        try:
            train_pack(
                self.next_member,
                splits,
                arch_of(self.base, splits.n_features, splits.n_outputs),
                instantiate(self.base.optimizer),
                slots=self.spec.pack,
                hooks=PackHooks(self.on_epoch_end, self.on_member_done, diverge_level(self.base)),
            )
        except BaseException:  # Ctrl-C, SIGTERM, a crash: every open run closes, not RUNNING
            self.curves.abort()
            for packed in self.running.values():
                packed.heartbeat.stop()
                packed.run.__exit__(*sys.exc_info())
            raise
        self.curves.close()  # every trial's curves.png logged before the worker exits

    def next_member(self) -> Member | None:
        """The study's next trial as a member of the pack; None when there is none now. Only a
        pack with no trial of its own may wait for one (it would wait for itself)."""
        while (trial := self.next_trial(not self.running)) is not None:
            try:
                return member_of(self._open(trial), key=trial.number)
            except Exception as error:  # this trial fails; the pack takes the next one
                self._fail(trial, error)
        return None

    def _open(self, trial: optuna.Trial) -> DictConfig:
        start = self.runner.start(trial)
        cfg = resolved_config(start.cfg)
        cfg.trainer.engine = PACKED  # how its run reproduces: alone through the packed code
        write_config_files(cfg, start.overrides, start.output_dir)
        client = self.runner.client
        run = contextlib.ExitStack()
        run_id = run.enter_context(
            tracked_run(
                client,
                self.experiment_id,
                run_name(trial.number, self.spec.n_trials),
                run_tags(cfg, start.tags),
                run_params(cfg),
                self.spec.parent_run_id,
            )
        )
        metrics_logger = run.enter_context(
            RunLog(client, run_id, float(cfg.tracking.flush_every_s))
        )
        heartbeat = TrialHeartbeat(self.storage, self.study, trial)
        self.running[trial.number] = PackedTrial(
            trial,
            cfg,
            start.output_dir,
            run,
            run_id,
            metrics_logger,
            heartbeat,
            time.perf_counter(),
        )
        return cfg

    def on_epoch_end(self, member: Member, row: dict[str, float]) -> str | None:
        """Report the trial's best value so far; "pruned" when its pruner says stop."""
        packed = self.running[member.key]
        value = row.get(self.spec.metric, math.nan)
        if not math.isfinite(value):
            return "diverged"
        if packed.best is None or (value > packed.best if self.maximize else value < packed.best):
            packed.best = value
        packed.trial.report(packed.best, step=int(row["epoch"]))
        if self.spec.pruner != "none" and packed.trial.should_prune():
            return "pruned"
        return None

    def on_member_done(self, member: Member) -> None:
        """Close the trial's run with its outcome and tell the study and the parent."""
        packed = self.running.pop(member.key)
        trial = packed.trial
        stopped_early = member.stop_reason in ("pruned", "diverged")
        outcome = trial_outcome(member.stop_reason if stopped_early else None, packed.best, "")
        state = {"COMPLETE": COMPLETE, "PRUNED": PRUNED}.get(outcome["trial_state"], FAIL)
        try:
            if member.error is not None:
                raise member.error
            if state == FAIL:
                raise RuntimeError(f"metric {self.spec.metric!r} was never logged")
            elapsed = time.perf_counter() - packed.started
            result = packed_result(packed.cfg, member, self.prepared, packed.output_dir, elapsed)
            judge(result, outcome)
            done = RunOutcome(packed.run_id, self.experiment_id, result)
            record_result(
                self.runner.client,
                done,
                packed.metrics_logger,
                packed.output_dir,  # its config files and checkpoint, nothing else
                outcome,
            )
            packed.run.close()
            note_run(trial, packed.run_id, result)
            self.curves.submit(self._curves_job(done, packed, trial.number))
        except Exception as error:  # the run holds the error tag; the pack goes on
            packed.run.__exit__(type(error), error, error.__traceback__)
            trial.set_user_attr("mlflow_run_id", packed.run_id)
            note_failure(trial, error)
            state = FAIL
        finally:
            packed.heartbeat.stop()
        self.runner.finish(self.study, trial, state, packed.best)

    def _curves_job(self, run: RunOutcome, packed: PackedTrial, number: int) -> CurvesJob:
        """The trial's curves.png, drawn off the pack's path (study.curves_writer)."""
        diagnosis = run.result.diagnosis
        return CurvesJob.of(
            run.run_id,
            packed.output_dir / CURVES_FIGURE,
            run_name(number, self.spec.n_trials),
            diagnosis.verdict,
            diagnosis.reason,
            run.result.baseline_loss,
            run.result.history,
            run_note(run, CURVES_FIGURE),
        )

    def _fail(self, trial: optuna.Trial, error: Exception) -> None:
        packed = self.running.pop(trial.number, None)
        if packed is not None:
            packed.heartbeat.stop()
            packed.run.__exit__(type(error), error, error.__traceback__)
        note_failure(trial, error)
        self.runner.finish(self.study, trial, FAIL, None)

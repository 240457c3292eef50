"""A worker's trials trained `sweep.pack` at a time as one packed model (study.packed).

Each trial is claimed and sampled as in a one-at-a-time worker, becomes a member of the pack,
reports its best value to the pruner every epoch, and gets its own MLflow child run with its
curves, metrics, verdict and artifacts when it ends; its slot then takes the study's next trial
at the next epoch boundary, so the pack stays full until the study runs out of trials.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from omegaconf import DictConfig

from study.config import resolved_config
from study.data import PreparedData, prepare_data
from study.packed import (
    PACKED,
    Member,
    arch_of,
    member_of,
    optimizer_of,
    packed_result,
    train_pack,
)
from study.run import CURVES_FIGURE, OpenRun, RunOutcome, RunPlace, run_note
from study.sweep.claims import TrialHeartbeat
from study.sweep.curves_writer import CurvesJob, CurvesWriter
from study.sweep.trials import FAIL, TrialReport, TrialRunner, note_failure, note_run, run_name


@dataclass
class PackedTrial:
    """A trial while it trains in the pack: its run stays open until the trial ends."""

    trial: optuna.Trial
    cfg: DictConfig
    run: OpenRun
    report: TrialReport
    heartbeat: TrialHeartbeat
    started: float


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
        self.base = resolved_config(runner.base)
        self.running: dict[int, PackedTrial] = {}

    def run(self) -> None:
        try:
            self.prepared: PreparedData = prepare_data(self.base)  # every member's data
            client = self.runner.client
            experiment_id = self.runner.store.experiment_id(client, self.spec.settings.study_name)
            self.place = RunPlace(client, experiment_id, self.spec.parent_run_id)
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
                optimizer_of(self.base),
                slots=self.spec.settings.pack,
                on_member_done=self.on_member_done,
            )
        except BaseException as error:  # Ctrl-C, SIGTERM, a crash: every open run closes
            self.curves.abort()
            for packed in self.running.values():
                packed.heartbeat.stop()
                packed.run.abort(error)
            raise
        self.curves.close()  # every trial's curves.png logged before the worker exits

    def next_member(self) -> Member | None:
        """The study's next trial as a member of the pack; None when there is none now. Only a
        pack with no trial of its own may wait for one (it would wait for itself)."""
        while (trial := self.next_trial(not self.running)) is not None:
            try:
                packed = self._open(trial)
                return member_of(packed.cfg, key=trial.number, report=packed.report)
            except Exception as error:  # this trial fails; the pack takes the next one
                self._fail(trial, error)
        return None

    def _open(self, trial: optuna.Trial) -> PackedTrial:
        start = self.runner.start(trial)
        cfg = resolved_config(start.cfg)
        cfg.trainer.engine = PACKED  # how its run reproduces: alone through the packed code
        run = OpenRun(
            self.place,
            cfg,
            start.output_dir,
            start.overrides,
            run_name=run_name(trial.number, self.spec.settings.n_trials),
            tags=start.tags,
            owns_folder=True,  # its config files and checkpoint, nothing else
        )
        try:
            heartbeat = TrialHeartbeat(self.storage, self.study, trial)
        except BaseException as error:
            run.abort(error)
            raise
        packed = PackedTrial(
            trial, cfg, run, self.runner.report(trial), heartbeat, time.perf_counter()
        )
        self.running[trial.number] = packed
        return packed

    def on_member_done(self, member: Member) -> None:
        """Close the trial's run with its outcome and tell the study and the parent."""
        packed = self.running.pop(member.key)
        trial, report = packed.trial, packed.report
        state, value = FAIL, None
        try:
            if member.error is not None:
                raise member.error
            elapsed = time.perf_counter() - packed.started
            result = packed_result(
                packed.cfg, member, self.prepared, packed.run.output_dir, elapsed
            )
            done = packed.run.close(result, report.outcome(member.stop_reason), curves=False)
            note_run(trial, packed.run.run_id, result)
            self.curves.submit(self._curves_job(done, packed.run, trial.number))
            state, value = report.end(member.stop_reason)
        except Exception as error:  # the run holds the error tag; the pack goes on
            packed.run.abort(error)
            trial.set_user_attr("mlflow_run_id", packed.run.run_id)
            note_failure(trial, error)
        finally:
            packed.heartbeat.stop()
        self.runner.finish(self.study, trial, state, value)

    def _curves_job(self, done: RunOutcome, run: OpenRun, number: int) -> CurvesJob:
        """The trial's curves.png, drawn off the pack's path (study.sweep.curves_writer)."""
        diagnosis = done.result.diagnosis
        return CurvesJob.of(
            done.run_id,
            run.output_dir / CURVES_FIGURE,
            run_name(number, self.spec.settings.n_trials),
            diagnosis.verdict,
            diagnosis.reason,
            done.result.baseline_loss,
            done.result.history,
            run_note(done, CURVES_FIGURE),
        )

    def _fail(self, trial: optuna.Trial, error: Exception) -> None:
        packed = self.running.pop(trial.number, None)
        if packed is not None:
            packed.heartbeat.stop()
            packed.run.abort(error)
        note_failure(trial, error)
        self.runner.finish(self.study, trial, FAIL, None)

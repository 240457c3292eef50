"""A worker's trials trained `sweep.pack` at a time as one packed model (study.packed).

Each trial is claimed and sampled as in a one-at-a-time worker, becomes a member of the pack,
reports its best value to the pruner every epoch, and gets its own MLflow child run with its
curves, metrics, verdict and artifacts when it ends; its slot then takes the study's next trial
at the next epoch boundary, so the pack stays full until the study runs out of trials.

A trial's run is opened (config files, the MLflow run, its params: ~30 ms) and closed
(checkpoint, artifacts, final metrics, tell: ~40 ms) by one writer thread, in order, while the
pack trains on: on the training thread every pack mate would wait for those writes, which wait
on SQLite, the journal and the disk with the GIL released. The trial's slot is freed (the
parent's go-ahead asked) as soon as it stops training; its curves.png is drawn by the sweep's
parent (study.sweep.curves_writer).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

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
from study.secrets import redact
from study.sweep.claims import TrialHeartbeat, run_name
from study.sweep.curves_writer import CurvesJob
from study.sweep.spec import CurvesDue, Trained
from study.sweep.trials import (
    FAIL,
    TrialReport,
    TrialRunner,
    TrialStart,
    note_failure,
    note_run,
)


@dataclass
class PackedTrial:
    """A trial while it trains in the pack: its run stays open until the trial ends."""

    trial: optuna.Trial
    cfg: DictConfig
    start: TrialStart
    report: TrialReport
    heartbeat: TrialHeartbeat
    started: float
    run: OpenRun | None = None  # opened by the writer thread
    open_error: Exception | None = None  # why it could not be


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
        self.writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="run-writes")

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
            self.writes.shutdown(wait=True)  # the trials that ended are closed as they ended
            for packed in self.running.values():
                packed.heartbeat.stop()
                if packed.run is not None:
                    packed.run.abort(error)
            raise
        self.writes.shutdown(wait=True)  # every trial closed and told before the worker exits

    def next_member(self) -> Member | None:
        """The study's next trial as a member of the pack; None when there is none now. Only a
        pack with no trial of its own may wait for one (it would wait for itself)."""
        while (trial := self.next_trial(not self.running)) is not None:
            try:
                return self._open(trial)
            except Exception as error:  # this trial fails; the pack takes the next one
                self._fail(trial, error)
        return None

    def _open(self, trial: optuna.Trial) -> Member:
        """Sample `trial` as a member and start its heartbeat; its run opens off the path."""
        start = self.runner.start(trial)
        cfg = resolved_config(start.cfg)
        cfg.trainer.engine = PACKED  # how its run reproduces: alone through the packed code
        report = self.runner.report(trial)
        member = member_of(cfg, key=trial.number, report=report)
        heartbeat = TrialHeartbeat(self.storage, self.study, trial)
        packed = PackedTrial(trial, cfg, start, report, heartbeat, time.perf_counter())
        self.running[trial.number] = packed
        self._write(self._open_run, packed)  # nothing after this may fail: it is queued
        return member

    def _open_run(self, packed: PackedTrial) -> None:
        try:
            packed.run = OpenRun(
                self.place,
                packed.cfg,
                packed.start.output_dir,
                packed.start.overrides,
                run_name=run_name(packed.trial.number, self.spec.settings.n_trials),
                tags=packed.start.tags,
                owns_folder=True,  # its config files and checkpoint, nothing else
            )
        except Exception as error:  # the trial trains on, and fails when it ends
            packed.open_error = error

    def on_member_done(self, member: Member) -> None:
        """Free the trial's slot (the parent's go-ahead for the next trial), then close its run
        off the pack's path."""
        packed = self.running.pop(member.key)
        self.runner.emit(Trained(packed.trial.number))
        self._write(self._close, packed, member, time.perf_counter() - packed.started)

    def _close(self, packed: PackedTrial, member: Member, elapsed: float) -> None:
        """Close the trial's run with its outcome, and tell the study and the parent."""
        trial, report, run = packed.trial, packed.report, packed.run
        state, value = FAIL, None
        try:
            if member.error is not None or packed.open_error is not None:
                raise member.error or packed.open_error  # type: ignore[misc]
            assert run is not None
            result = packed_result(packed.cfg, member, self.prepared, run.output_dir, elapsed)
            done = run.close(result, report.outcome(member.stop_reason), curves=False)
            note_run(trial, run.run_id, result)
            self.runner.emit(CurvesDue(asdict(self._curves_job(done, run, trial.number))))
            state, value = report.end(member.stop_reason)
        except Exception as error:  # the run holds the error tag; the pack goes on
            if run is not None:
                run.abort(error)
                trial.set_user_attr("mlflow_run_id", run.run_id)
            note_failure(trial, error)
        finally:
            packed.heartbeat.stop()
        self.runner.finish(self.study, trial, state, value)

    def _curves_job(self, done: RunOutcome, run: OpenRun, number: int) -> CurvesJob:
        """The trial's curves.png, drawn by the sweep's parent (study.sweep.curves_writer)."""
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

    def _write(self, job: Callable[..., None], *args: Any) -> None:
        """`job(*args)` on the writer thread, after the writes submitted before it."""
        self.writes.submit(job, *args).add_done_callback(_say_if_failed)

    def _fail(self, trial: optuna.Trial, error: Exception) -> None:
        packed = self.running.pop(trial.number, None)
        if packed is not None:
            packed.heartbeat.stop()
            if packed.run is not None:
                packed.run.abort(error)
        note_failure(trial, error)
        self.runner.finish(self.study, trial, FAIL, None)


def _say_if_failed(done: Future[None]) -> None:
    """A write's own errors fail its trial; anything else escaping it (the parent gone) is
    said in the worker's log, and the writes after it still run."""
    error = done.exception()
    if error is not None:
        print(f"a packed trial's writes failed: {redact(repr(error))}", file=sys.stderr)

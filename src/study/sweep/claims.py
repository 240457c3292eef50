"""Exactly n_trials: a worker claims each trial under a lock shared by every worker and host.

A claim counts the study's finished and running trials and, if fewer than n_trials, starts one
(`study.ask()`: a waiting retry first, else a new trial) before the lock is released, so no two
workers can both take the last slot. `study.optimize` cannot start a trial under our lock, so
workers use ask/tell and record RDB heartbeats themselves (TrialHeartbeat). Failed trials do not
count, so a failure makes room for one more claim; a retry is a waiting trial with the failed
trial's parameters (study.sweep.recovery).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import warnings
from collections.abc import Sequence

import optuna

from study.sweep.backends import FINISHED, StudyLock
from study.sweep.budget import deadline_passed

RUNNING = optuna.trial.TrialState.RUNNING
COUNTED = (*FINISHED, RUNNING)
HOST = socket.gethostname()


def heartbeat_interval(storage: optuna.storages.BaseStorage) -> int | None:
    """Seconds between heartbeats of an RDB storage; None for storages without heartbeats."""
    if isinstance(storage, optuna.storages.RDBStorage):
        return storage.get_heartbeat_interval()
    return None


def trial_id(storage: optuna.storages.BaseStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of trial `number`, through the storage's public interface."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def claim_trial(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    n_trials: int,
    lock: StudyLock,
    wait: bool = True,
    deadline: float | None = None,
) -> optuna.Trial | None:
    """Start one of the study's n_trials in this worker; None when all are taken.

    `storage` is the one `study` was loaded with. With heartbeats (RDB storages), trials whose
    worker went silent are failed first (their retries queued by the storage's stale-trial
    callback), and while the last trials run elsewhere this waits: one of them may yet fail,
    on a host that will never retry it. A worker that runs trials itself must not wait (some
    of those it would wait for are its own): `wait=False` answers None at once. Past
    `deadline` (the session's time budget, study.sweep.budget) nothing is claimed or waited for.
    """
    heartbeat = heartbeat_interval(storage)
    while True:
        if deadline_passed(deadline):
            return None
        with lock.held(), warnings.catch_warnings():
            # "experimental"; "supposed to be used with Study.optimize": we beat ourselves
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            if heartbeat:
                optuna.storages.fail_stale_trials(study)
            counted = study.get_trials(deepcopy=False, states=COUNTED)
            if fail_unclaimed(study, counted):
                counted = study.get_trials(deepcopy=False, states=COUNTED)
            if len(counted) < n_trials:
                trial = study.ask()
                if heartbeat:  # stale-able from now on, even if we die before the first beat
                    storage.record_heartbeat(trial_id(storage, study, trial.number))  # type: ignore[attr-defined]
                trial.set_user_attr("host", HOST)
                trial.set_user_attr("pid", os.getpid())
                return trial
            if not heartbeat or not wait or sum(t.state in FINISHED for t in counted) >= n_trials:
                return None
        time.sleep(heartbeat)


def fail_unclaimed(study: optuna.Study, trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    """Fail the RUNNING `trials` whose claimer died between creating them and naming itself
    (host, pid), and say how many. Call it holding the study's lock: no claim is under way
    then, and nothing else would ever tell such a trial from a live one (it may have died
    before its first heartbeat, and it has no pid). It never trained: no run, no retry."""
    unclaimed = [t for t in trials if t.state == RUNNING and "pid" not in t.user_attrs]
    for trial in unclaimed:
        with contextlib.suppress(ValueError, RuntimeError):  # another host got there first
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return len(unclaimed)


class TrialHeartbeat:
    """Records a running trial's heartbeat so other hosts can tell when its worker died."""

    def __init__(
        self, storage: optuna.storages.BaseStorage, study: optuna.Study, trial: optuna.Trial
    ) -> None:
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        interval = heartbeat_interval(storage)
        if interval:
            assert isinstance(storage, optuna.storages.RDBStorage)
            beat_id = trial_id(storage, study, trial.number)
            self.thread = threading.Thread(
                target=self._beat, args=(storage, beat_id, interval), daemon=True
            )
            self.thread.start()

    def _beat(self, storage: optuna.storages.RDBStorage, beat_id: int, interval: float) -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is retried; never kill the trial
                storage.record_heartbeat(beat_id)
            if self.stopped.wait(interval):
                return

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()


def run_name(number: int, n_trials: int) -> str:
    """`trial 007`: padded to the digits of n_trials, so names sort as numbers do."""
    return f"trial {number:0{len(str(max(n_trials - 1, 0)))}d}"

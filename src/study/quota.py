"""Exactly n_trials: a worker claims each trial under a lock shared by every worker and host.

A claim counts the study's finished and running trials and, if fewer than n_trials, starts one
(`study.ask()`: a waiting retry first, else a new trial) before the lock is released, so no two
workers can both take the last slot. `study.optimize` cannot start a trial under our lock, so
workers use ask/tell and record RDB heartbeats themselves (HeartbeatThread). The lock is a
PostgreSQL advisory lock for a PostgreSQL storage (hosts share nothing else) and a file lock
beside a journal or sqlite file. Failed trials do not count, so a failure makes room for one
more claim; a retry is a waiting trial with the failed trial's parameters.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages._heartbeat import BaseHeartbeat

from study.paths import database_url
from study.search import FINISHED

COUNTED = (*FINISHED, optuna.trial.TrialState.RUNNING)
HOST = socket.gethostname()


def _advisory_key(study_name: str) -> int:
    digest = hashlib.sha256(f"study:{study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class StudyLock:
    """Mutual exclusion around claims, across processes (file) or hosts (PostgreSQL)."""

    def __init__(self, storage_url: str, study_name: str) -> None:
        self.storage_url = storage_url
        self.key = _advisory_key(study_name)
        self._connection: Any = None
        if storage_url.startswith("postgresql"):
            self.lock_path: Path | None = None
        elif storage_url.startswith("sqlite:///"):
            self.lock_path = Path(storage_url.removeprefix("sqlite:///") + ".claims.lock")
        elif "://" not in storage_url:
            self.lock_path = Path(f"{Path(storage_url).expanduser()}.claims.lock")
        else:  # another database server: its own transactions are all we have
            self.lock_path = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self.storage_url.startswith("postgresql"):
            with self._postgres_lock():
                yield
        elif self.lock_path is not None:
            with open(self.lock_path, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        else:
            yield

    @contextlib.contextmanager
    def _postgres_lock(self) -> Iterator[None]:
        import sqlalchemy

        if self._connection is None:
            engine = sqlalchemy.create_engine(
                database_url(self.storage_url),  # psycopg2: SQLAlchemy's default is psycopg 3
                poolclass=sqlalchemy.pool.NullPool,
                connect_args={"connect_timeout": 10},
            )
            self._connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._connection.execute(
            sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self.key}
        )
        try:
            yield
        finally:
            self._connection.execute(
                sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self.key}
            )


def counted_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=COUNTED))


def claim_trial(study: optuna.Study, n_trials: int, lock: StudyLock) -> optuna.Trial | None:
    """Start one of the study's n_trials in this worker; None when all are taken.

    With heartbeats (RDB storages), trials whose worker went silent are failed first (their
    retries queued by the storage's stale-trial callback), and while the last trials run
    elsewhere this waits: one of them may yet fail, on a host that will never retry it.
    """
    heartbeat = _heartbeat_interval(study)
    while True:
        with lock.held(), warnings.catch_warnings():
            # "experimental"; "supposed to be used with Study.optimize": we beat ourselves
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            if heartbeat:
                optuna.storages.fail_stale_trials(study)
            counted = study.get_trials(deepcopy=False, states=COUNTED)
            if len(counted) < n_trials:
                trial = study.ask()
                if heartbeat:  # stale-able from now on, even if we die before the first beat
                    study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
                trial.set_user_attr("host", HOST)
                trial.set_user_attr("pid", os.getpid())
                return trial
            if not heartbeat or sum(t.state in FINISHED for t in counted) >= n_trials:
                return None
        time.sleep(heartbeat)


def _heartbeat_interval(study: optuna.Study) -> int | None:
    # A study's RDBStorage is wrapped (in optuna's _CachedStorage): ask for the interface.
    storage = study._storage
    return storage.get_heartbeat_interval() if isinstance(storage, BaseHeartbeat) else None


class HeartbeatThread:
    """Records a running trial's heartbeat so other hosts can tell when its worker died."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial) -> None:
        self.storage = study._storage
        self.trial_id = trial._trial_id
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        interval = _heartbeat_interval(study)
        if interval:
            self.thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)
            self.thread.start()

    def _beat(self, interval: float) -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is retried; never kill the trial
                self.storage.record_heartbeat(self.trial_id)  # type: ignore[attr-defined]
            if self.stopped.wait(interval):
                return

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()


def retry_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, lock: StudyLock) -> None:
    """Enqueue a failed trial's parameters again, remembering which trial it retries."""
    with lock.held():
        origin = trial.user_attrs.get("retry_of", trial.number)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": origin}, skip_if_exists=False)


def retries_of(study: optuna.Study, number: int) -> int:
    return sum(t.user_attrs.get("retry_of") == number for t in study.get_trials(deepcopy=False))


def owner_is_gone(trial: optuna.trial.FrozenTrial) -> bool:
    """A RUNNING trial whose worker process on this host no longer exists."""
    if trial.user_attrs.get("host") != HOST:
        return False
    pid = trial.user_attrs.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False

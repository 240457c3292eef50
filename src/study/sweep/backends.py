"""Optuna's engines for a study: samplers, pruners and storages, and the study's lock.

A journal file serves several processes on one machine with no server; an RDB storage on
PostgreSQL serves many machines, with heartbeats so that a dead host's trials are failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from optuna.storages.journal import JournalFileBackend

from study.errors import UserError
from study.locks import advisory_lock, autocommit_connection, flock, lock_key, schema_lock
from study.paths import PROJECT_ROOT, database_url
from study.secrets import redact

SAMPLERS = ("tpe", "random", "gp", "cmaes")
PRUNERS = ("median", "hyperband", "none")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def quiet_optuna() -> None:
    """No line per trial from Optuna: the sweep prints its own progress. Called by the sweep's
    parent and each worker."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise UserError(f"sweep.sampler={name!r} is unknown: use one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, max_epochs: int, in_flight: int = 1) -> optuna.pruners.BasePruner:
    """`in_flight`: trials that train at once (workers x pack). The median pruner compares a
    trial with finished trials only; while the first trials run side by side, the first to
    finish are the fast learners (with low early losses), and their median pruned most of a
    packed study's later trials (mean best value of 5 packed lecture studies 0.111, one at a
    time 0.101; waiting for as many finished trials as run at once: 0.105 over 15). So it waits."""
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=max(5, in_flight), n_warmup_steps=max(1, max_epochs // 40)
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs)
    if name in ("none", None):
        return optuna.pruners.NopPruner()
    raise UserError(f"sweep.pruner={name!r} is unknown: use one of {', '.join(PRUNERS)}")


SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")  # a path is a journal file, whatever its name
_RDB_URL = re.compile(r"^(sqlite|postgresql|mysql|oracle|mssql)(\+\w+)?://")


def default_storage(study_name: str) -> str:
    """A journal file under mlruns/: safe for several processes, no server to start."""
    return str(PROJECT_ROOT / "mlruns" / "optuna" / f"{study_name}.journal")


def check_storage_url(url: str) -> None:
    """UserError unless `url` is an RDB URL or a journal file path (checked without opening)."""
    shown = redact(url)
    if _RDB_URL.match(url):
        return
    if "://" in url:
        raise UserError(
            f"sweep.storage={shown!r} is not a storage Optuna can use: give a journal file path, "
            "sqlite:///file.db or postgresql://user@host:5432/db"
        )
    if Path(url).suffix.lower() in SQLITE_SUFFIXES:
        absolute = Path(url).expanduser().absolute()
        raise UserError(
            f"sweep.storage={shown!r} names a SQLite file, but a path is read as a journal "
            f"file: write sqlite:///{absolute} for SQLite, or a path ending in .journal"
        )
    if Path(url).expanduser().is_dir():
        raise UserError(
            f"sweep.storage={shown!r} is a folder: give a journal file path in it, "
            f"e.g. {Path(url) / 'study.journal'}"
        )


def storage_exists(url: str) -> bool:
    """Whether the storage may hold studies already; opening a new journal or SQLite file
    creates it, and a study refused before then leaves nothing behind."""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).expanduser().exists()
    return "://" in url or Path(url).expanduser().exists()


def make_storage(
    url: str,
    heartbeat_s: int = 10,
    on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL (RDB) or a file path (journal); UserError if unusable.

    An RDB storage records heartbeats every `heartbeat_s` seconds; a trial silent for three
    times that is stale, and whoever fails it (claims.claim_trial) calls `on_stale` on it.
    """
    check_storage_url(url)
    shown = redact(url)
    if _RDB_URL.match(url):
        try:
            with schema_lock(url, "optuna"), warnings.catch_warnings():
                # heartbeats are "experimental": one warning a start
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    database_url(url),
                    heartbeat_interval=heartbeat_s,
                    grace_period=3 * heartbeat_s,
                    heartbeat_stale_trial_callback=on_stale,
                    # Few connections per process: many hosts x workers share one server's
                    # max_connections (100 by default).
                    engine_kwargs={**_engine_kwargs(url), "pool_size": 1, "max_overflow": 3},
                )
        except Exception as error:  # sqlalchemy/driver errors: bad host, password, database
            reason = redact(str(error).strip().splitlines()[0]) if str(error).strip() else ""
            raise UserError(
                f"sweep.storage={shown!r} cannot be used: {reason or type(error).__name__}"
            ) from error
    path = Path(url).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = UnsyncedJournalFile(str(path))
    except OSError as error:
        raise UserError(f"sweep.storage={shown!r} cannot be written: {error.strerror}") from error
    return optuna.storages.JournalStorage(backend)


class UnsyncedJournalFile(JournalFileBackend):
    """Optuna's journal file, its appends under our flock (FlockLock) and not fsync'd.

    The stock backend fsyncs every append, and a trial appends every epoch (its report). While
    the sweep's MLflow store and checkpoints leave dirty pages on an ext4 disk, each fsync
    waits for the filesystem's journal commit: a packed trial's fixed cost on its training path
    measured 104-115 ms with fsync, 29 ms without (tools/bench.py packed, 2 cores). The same
    durability as the MLflow store (SQLite's WAL with synchronous=NORMAL, study.tracking): a
    crashed process loses nothing (the append is in the page cache), a power cut may lose the
    last appends; a torn last line is dropped by the next append, and a resumed study fails
    and retries the trials such a cut leaves RUNNING. The file stays Optuna's own format
    (optuna-dashboard and a stock JournalFileBackend read it).
    """

    def __init__(self, path: str) -> None:
        self.lock_path = f"{path}.lock"
        super().__init__(path, lock_obj=FlockLock(self.lock_path))  # type: ignore[arg-type]
        self.path = path

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        with flock(self.lock_path), open(self.path, "r+b") as journal:
            journal.seek(_whole_lines_end(journal))  # past a torn last line, if any
            journal.truncate()
            journal.write(lines.encode("utf-8"))


def _whole_lines_end(journal: BinaryIO, tail: int = 1 << 16) -> int:
    """Where the journal's last whole line ends. A torn line (a power cut, a full disk) is
    skipped by Optuna's reader while it is last, but fails every read once a line follows it:
    the next append replaces it."""
    end = journal.seek(0, os.SEEK_END)
    start = max(0, end - tail)
    journal.seek(start)
    data = journal.read()
    if not data or data.endswith(b"\n"):
        return end
    return start + data.rfind(b"\n") + 1  # 0 when the file holds no whole line


class FlockLock:
    """The journal file's lock for Optuna's JournalFileBackend (acquire/release), on flock.

    Optuna's default lock is a lock file that a SIGKILLed worker leaves behind; every other
    worker then waits out a 30 s grace period before breaking it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._held: contextlib.ExitStack | None = None

    def acquire(self) -> bool:
        held = contextlib.ExitStack()
        held.enter_context(flock(self.path))
        self._held = held
        return True

    def release(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    return {}


class StudyLock:
    """Mutual exclusion around a study's claims, across processes (a file beside a journal or
    sqlite storage) or hosts (a PostgreSQL advisory lock: hosts share nothing else)."""

    def __init__(self, storage_url: str, study_name: str) -> None:
        self.storage_url = storage_url
        self.key = lock_key(f"study:{study_name}")
        self._connection: Any = None
        self.lock_path: Path | None = None
        if storage_url.startswith("sqlite:///"):
            self.lock_path = Path(storage_url.removeprefix("sqlite:///") + ".claims.lock")
        elif "://" not in storage_url:
            self.lock_path = Path(f"{Path(storage_url).expanduser()}.claims.lock")
        # another database server: its own transactions are all we have

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self.storage_url.startswith("postgresql"):
            if self._connection is None:
                self._connection = autocommit_connection(self.storage_url)
            with advisory_lock(self._connection, self.key):
                yield
        elif self.lock_path is not None:
            with flock(self.lock_path):
                yield
        else:
            yield


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None

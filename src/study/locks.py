"""Locks shared by processes (flock on a file) and by hosts (PostgreSQL advisory locks)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from study.paths import database_url


def lock_key(name: str) -> int:
    """A PostgreSQL advisory lock key (a signed 64-bit integer) for `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def flock(path: Path | str) -> Iterator[None]:
    """Hold an exclusive flock(2) on `path`: the kernel frees it when its holder dies."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def advisory_lock(connection: Any, key: int) -> Iterator[None]:
    """Hold PostgreSQL advisory lock `key` on an AUTOCOMMIT connection: shared by every host."""
    import sqlalchemy

    connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
    try:
        yield
    finally:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})


def autocommit_connection(url: str) -> Any:
    """A connection of its own (no pool) to database `url`, in AUTOCOMMIT mode."""
    import sqlalchemy

    connect_args = {"connect_timeout": 10} if url.startswith("postgresql") else {}
    engine = sqlalchemy.create_engine(
        database_url(url), poolclass=sqlalchemy.pool.NullPool, connect_args=connect_args
    )
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


@contextlib.contextmanager
def schema_lock(url: str, owner: str) -> Iterator[None]:
    """Take turns creating or upgrading `owner`'s tables in database `url`.

    Neither MLflow's migrations nor Optuna's table creation lock anything: processes opening
    one fresh database at once break each other's (duplicate tables, alembic's "expected to
    match one row", columns missing mid-migration). A PostgreSQL database is locked with an
    advisory lock, a SQLite file with flock(2) on a lock file beside it: not on the database
    itself, since closing any descriptor of a file drops the fcntl(2) locks SQLite's other
    connections in this process hold on it (seen: runs left RUNNING). Other databases: no lock.
    """
    if url.startswith("postgresql"):
        key = lock_key(f"schema:{owner}")
        with autocommit_connection(url) as connection, advisory_lock(connection, key):
            yield
    elif url.startswith("sqlite:///"):
        with flock(f"{Path(url.removeprefix('sqlite:///')).expanduser()}.lock"):
            yield
    else:
        yield

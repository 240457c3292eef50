"""SQLite stores in write-ahead-log mode, for every SQLAlchemy engine this process creates.

In SQLite's default rollback-journal mode each commit syncs the file twice and locks readers
out while it writes: with sweep workers, the parent and the UI all using one local MLflow store,
writers queue behind each other's syncs and wait in SQLite's busy back-off (1, 2, 5, 10 ms...).
In WAL mode readers never block the writer and a commit is one append; with
`synchronous=NORMAL` it is not synced (an application crash loses nothing, a power cut may lose
the last commits). Measured here: MLflow's writes 20-25% cheaper, and no sync per commit.
WAL needs a local disk: SQLite does not support it on network filesystems.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import sqlalchemy
from sqlalchemy import event


def _tune(dbapi_connection: Any, _record: Any) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # kept in the file: later openers get it too
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def use_wal_for_sqlite() -> None:
    """Idempotent: registers the listener once per process."""
    if not event.contains(sqlalchemy.engine.Engine, "connect", _tune):
        event.listen(sqlalchemy.engine.Engine, "connect", _tune)

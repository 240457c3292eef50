"""Helpers shared by tests: tiny-run overrides, the bad-input contract, the PostgreSQL server."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from study.secrets import redact
from study.tracking import Store

PG_HOST, PG_PORT = "127.0.0.1", 5432

# Tiny, fast runs: a few epochs on a small class.
TINY = [
    "data.n_samples=120",
    "trainer.max_epochs=4",
    "trainer.progress_bar=false",
    "model.hidden_sizes=[8]",
]


def tiny(*extra: str) -> list[str]:
    return [*TINY, *extra]


def cli(script: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`scripts/<script>.py ARGV` run in this process, from `cwd`, its output captured.

    A subprocess pays ~5 s of imports; in-process, bad input costs a fraction of a second.
    `script` is run (argv may start with `-m sweep`), reproduce or compare.
    """
    from study.cli import compare_main, reproduce_main, run_hydra, train_job

    entry = {
        "run": lambda: run_hydra(train_job, list(argv)),
        "reproduce": lambda: reproduce_main(list(argv)),
        "compare": lambda: compare_main(list(argv)),
    }[script]
    out, err = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = entry()
            except SystemExit as exit_:  # --help: Hydra prints it and exits
                code = exit_.code if isinstance(exit_.code, int) else 0
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess([script, *argv], code, out.getvalue(), err.getvalue())


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """Assert the bad-input contract (exit 2, one line, no traceback) and return that line."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def copy_store(template: Path, target: Path) -> Path:
    """A copy of a migrated MLflow store: creating one costs each process seconds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(template) as source, sqlite3.connect(target) as copy:
        source.backup(copy)
    return target


def all_runs(client: MlflowClient, statuses: Sequence[str] | None = None) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=10_000) if experiments else []
    return [r for r in runs if statuses is None or r.info.status in statuses]


@dataclass(frozen=True)
class PostgresServer:
    """The PostgreSQL server on 127.0.0.1:5432 (trust auth), as an administrator sees it."""

    user: str

    def url(self, database: str, password: str | None = None) -> str:
        login = f"{self.user}:{password}" if password else self.user
        return f"postgresql://{login}@{PG_HOST}:{PG_PORT}/{database}"

    def execute(self, sql: str, *args: object) -> None:
        import psycopg2

        connection = psycopg2.connect(
            host=PG_HOST, port=PG_PORT, user=self.user, dbname="postgres", connect_timeout=3
        )
        connection.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, args or None)
        finally:
            connection.close()

    @contextlib.contextmanager
    def database(self, prefix: str = "study_test") -> Iterator[str]:
        """A new empty database (its name), dropped afterwards even if still in use."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.execute(f'CREATE DATABASE "{name}"')
        try:
            yield name
        finally:
            self.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                name,
            )
            self.execute(f'DROP DATABASE IF EXISTS "{name}"')


# `mlflow server` as a separate process, as the README's many-machines set-up starts it.
def server_command(store: Store, host: str, port: int, artifacts: str | None = None) -> list[str]:
    """`mlflow server` on the store: one worker and no job runner start it in seconds, not 20.

    On a database store (PostgreSQL: many machines) the server keeps the artifacts in
    `artifacts` (a folder or a bucket URI) and proxies them: hosts upload through it and
    need no shared folder.
    """
    mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    command = [mlflow, "server", "--host", host, "--port", str(port), "--workers", "1"]
    if redact(store.uri) == store.uri:  # else server_env(store) passes it: `ps` shows argv to all
        command += ["--backend-store-uri", store.uri]
    if store.artifact_root is not None:
        command += ["--default-artifact-root", (store.artifact_root / "artifacts").as_uri()]
    elif artifacts is not None:
        command += ["--artifacts-destination", artifacts]
    return command


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the MLflow server exited with code {process.returncode}: "
                "is the port already in use? try --port"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.25)
    raise RuntimeError(f"the MLflow server did not answer at {url} within {timeout_s:.0f} s")

"""Start the MLflow UI/tracking server on our store, and wait until it answers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

from study.errors import UserError
from study.tracking import Store, redact, runs_url

DEFAULT_EXPERIMENT = "study"


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


def server_env(store: Store | None = None) -> dict[str, str]:
    """The server's environment; it carries the store's URI, which may hold a password."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # One worker needs few database connections; the default pool (5 + 10) crowds a shared
    # PostgreSQL that every sweep host also connects to.
    env.setdefault("MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", "2")
    env.setdefault("MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW", "3")
    if store is not None:
        env["MLFLOW_BACKEND_STORE_URI"] = store.uri
    return env


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(
                f"the MLflow server exited with code {process.returncode}: "
                "is the port already in use? try --port"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.25)
    raise UserError(f"the MLflow server did not answer at {url} within {timeout_s:.0f} s")


def serve_ui(
    store: Store,
    host: str = "127.0.0.1",
    port: int = 5000,
    experiment: str = DEFAULT_EXPERIMENT,
    artifacts: str | None = None,
) -> int:
    """Run the UI until Ctrl-C; print the link to the runs table once it answers."""
    client = store.client()
    experiment_id = store.experiment_id(client, experiment)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: binding {host}: anyone who can reach this machine can read and "
            "change your runs (the MLflow UI has no login)",
            file=sys.stderr,
        )
    else:
        print(f"MLflow UI bound to {host} (this machine only; --host to change)")
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    process = subprocess.Popen(server_command(store, host, port, artifacts), env=server_env(store))
    try:
        wait_until_up(url, process)
        print(f"runs: {runs_url(url, experiment_id)}", flush=True)
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)

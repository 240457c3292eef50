"""Shared fixtures: the real conf/ composed with overrides, a private MLflow store, scripts/,
and the PostgreSQL server (databases made per test module and dropped after)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from helpers import PG_HOST, PG_PORT, PostgresServer
from study.paths import TRACKING_ENV
from study.tracking import Store, configure_process

configure_process()  # as every command and sweep worker does before it talks to MLflow

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
SCRIPTS = ROOT / "scripts"


@pytest.fixture(autouse=True)
def no_tracking_uri_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's MLFLOW_TRACKING_URI would choose the store of every test (and of the
    scripts they start) that relies on the default; tests about the variable set it."""
    monkeypatch.delenv(TRACKING_ENV, raising=False)


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    """A fresh sqlite MLflow store private to the test."""
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


@pytest.fixture
def mlflow_client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri)


@pytest.fixture
def make_cfg(tracking_uri: str) -> Callable[..., DictConfig]:
    """Compose a primary config of the real conf/ with overrides, tracking into tracking_uri."""

    def _make(*overrides: str, config: str = "train") -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config, overrides=[f"tracking.uri={tracking_uri}", *overrides])

    return _make


@pytest.fixture
def run_script(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run scripts/NAME.py as a user would, from a temp working directory."""

    def _run(
        name: str,
        *args: str,
        timeout: float = 300,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(SCRIPTS / f"{name}.py"), *args],
            cwd=cwd or tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )

    return _run


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    """The PostgreSQL server; skipped where it does not answer, except in CI (CI=...), where
    the postgres tests must run: there a server that does not answer fails them."""
    import psycopg2

    errors = []
    for user in ("postgres", "root"):
        try:
            psycopg2.connect(
                host=PG_HOST, port=PG_PORT, user=user, dbname="postgres", connect_timeout=3
            ).close()
            return PostgresServer(user)
        except psycopg2.OperationalError as error:
            errors.append(f"{user}: {str(error).strip().splitlines()[0]}")
    message = f"PostgreSQL on {PG_HOST}:{PG_PORT} does not answer ({'; '.join(errors)})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}: in CI the postgres tests must run", pytrace=False)
    pytest.skip(f"{message}: start it to run the postgres tests")


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store").resolve() / "mlruns"


@pytest.fixture(scope="module")
def store(store_dir: Path) -> Store:
    # One sqlite store for the module: creating one costs about a second of schema migration.
    return Store.from_uri(f"sqlite:///{store_dir / 'mlflow.db'}")


@pytest.fixture
def experiment(store: Store, request: pytest.FixtureRequest) -> tuple[MlflowClient, str]:
    """A new experiment, private to the test, in the module's store."""
    client = store.client()
    return client, store.experiment_id(client, request.node.name)

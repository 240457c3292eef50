"""MLflow: the store, experiments, runs with a guaranteed final status, buffered metric logging."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, ListConfig, OmegaConf
from sqlalchemy import event

from study.config import check_tracking_uri
from study.errors import UserError
from study.locks import autocommit_connection, schema_lock
from study.paths import choose_tracking_uri, database_url
from study.secrets import mask_log_records, redact


def _tune(dbapi_connection: Any, _record: Any) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # kept in the file: later openers get it too
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def use_wal_for_sqlite() -> None:
    """SQLite stores in write-ahead-log mode, for every SQLAlchemy engine this process creates.

    In SQLite's default rollback-journal mode each commit syncs the file twice and locks
    readers out while it writes: with sweep workers, the parent and the UI all using one local
    MLflow store, writers queue behind each other's syncs and wait in SQLite's busy back-off
    (1, 2, 5, 10 ms...). In WAL mode readers never block the writer and a commit is one
    append; with `synchronous=NORMAL` it is not synced (an application crash loses nothing, a
    power cut may lose the last commits). Measured here: MLflow's writes 20-25% cheaper, and no
    sync per commit. WAL needs a local disk: SQLite does not support it on network filesystems.
    Idempotent: registers the listener once per process.
    """
    if not event.contains(sqlalchemy.engine.Engine, "connect", _tune):
        event.listen(sqlalchemy.engine.Engine, "connect", _tune)


def configure_process() -> None:
    """What every command and sweep worker sets once, before it talks to MLflow: quiet
    loggers, credentials masked in log records, SQLite stores in WAL mode, and MLflow's client
    settings. Called by the entry points (study.cli, the sweep worker); idempotent."""
    # A new or migrated store announces its schema upgrade at INFO level on every first use.
    for chatty in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # An unreachable server: urllib3 warns at each retry; we report it once, as one error line.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    mask_log_records()  # drivers and HTTP clients may log the URLs they were given
    use_wal_for_sqlite()  # the local store is shared by a sweep's workers, its parent and the UI
    for name, value in _MLFLOW_SETTINGS.items():
        os.environ.setdefault(name, value)


_MLFLOW_SETTINGS = {
    # Artifact downloads draw a progress bar per file: noise in logs and captured output.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # MLflow retries an unreachable server for minutes by default; say so within seconds.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    # A tracking server makes MLflow print two "View run" links on stdout as each run ends.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}

_DATABASE = re.compile(r"^(postgresql|mysql|mssql)(\+\w+)?://")

# A run started with this variable set becomes a child of that run: how `-m compare` nests its
# jobs under one parent (the environment also reaches jobs a launcher starts elsewhere).
PARENT_RUN_ENV = "STUDY_PARENT_RUN_ID"

# MLflow 3 opens experiments in its GenAI view unless told they hold model training.
EXPERIMENT_KIND_TAG = {"mlflow.experimentKind": "custom_model_development"}
NOTE_TAG = "mlflow.note.content"  # a run's description in the UI (markdown)
CONFIG_ARTIFACT = "config.yaml"  # a run's whole resolved config: what reproduce rebuilds
_MAX_PARAM_LENGTH = 6000
# Not logged as params: Hydra's instantiation keys, and settings of how a run is judged and
# tracked rather than of the model; the config.yaml artifact keeps every key.
_HIDDEN_PARAM_SECTIONS = ("diagnosis.", "tracking.")
_HIDDEN_PARAM_KEYS = ("_target_", "_partial_")
# Float32 losses carry 7 significant digits; more shows noise (0.925 as 0.92500001).
SIGNIFICANT_DIGITS = 7

# Database stores whose tables this process has created or found current: MLflow keeps one
# store object per URI, and checks its schema only when it makes it.
_OPENED_STORES: set[str] = set()

RUN_STORE_HINT = "pass --tracking-uri for the store that holds the run"


@dataclass(frozen=True)
class Store:
    """Where runs go: a tracking URI, and for local stores the folder that holds artifacts."""

    uri: str
    artifact_root: Path | None

    @classmethod
    def from_uri(cls, uri: str | None) -> Store:
        """The store `uri` names; without one, MLFLOW_TRACKING_URI's, else the project's."""
        choice = choose_tracking_uri(uri)
        if choice.uri.startswith("sqlite:///"):
            db = Path(choice.uri.removeprefix("sqlite:///"))
            return cls(choice.uri, db.parent)
        check_tracking_uri(choice.uri, choice.source)
        return cls(database_url(choice.uri), None)

    def must_exist(self, hint: str) -> Store:
        """This store, refused when it is a sqlite file that is not there: for commands that
        read runs, a missing file is a typo, not a wish for an empty store."""
        if self.artifact_root is not None:
            path = Path(self.uri.removeprefix("sqlite:///"))
            if not path.is_file():
                raise UserError(f"no MLflow store at {path}: {hint}")
        return self

    def client(self) -> MlflowClient:
        if self.artifact_root is not None:
            try:
                self.artifact_root.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UserError(
                    f"tracking.uri={self.uri!r}: its folder cannot be created: {error.strerror}"
                ) from error
        if self.artifact_root is not None or _DATABASE.match(self.uri):
            self._open_schema()
            return MlflowClient(tracking_uri=self.uri)
        client = MlflowClient(tracking_uri=self.uri)
        try:  # a server: ask it once, before anything is written elsewhere (a sweep's study)
            client.search_experiments(max_results=1)
        except Exception as error:
            raise UserError(
                f"tracking.uri={redact(self.uri)!r} cannot be reached: {_first_line(error)}"
            ) from error
        return client

    def _connect_once(self) -> None:
        """Fail in seconds: MLflow retries a database it cannot reach for ~100 s, then raises."""
        try:
            with autocommit_connection(self.uri):
                pass
        except Exception as error:  # driver errors: host, port, password, missing database
            raise UserError(
                f"tracking.uri={redact(self.uri)!r} cannot be reached: {_first_line(error)}"
            ) from error

    def _open_schema(self) -> None:
        """Create or upgrade MLflow's tables, once per process, holding the store's schema lock:
        MLflow's migrations lock nothing, and a run and a sweep started side by side on a new
        store broke each other's (study.locks.schema_lock)."""
        if self.uri in _OPENED_STORES:
            return
        self._connect_once()
        with schema_lock(self.uri, "mlflow"):
            MlflowClient(tracking_uri=self.uri).search_experiments(max_results=1)
        _OPENED_STORES.add(self.uri)

    def experiment_id(self, client: MlflowClient, name: str) -> str:
        """The id of experiment `name`, created (model-training view, local artifacts) if new."""
        try:
            experiment = client.get_experiment_by_name(name)
            if experiment is not None:
                return experiment.experiment_id
            location = (self.artifact_root / "artifacts").as_uri() if self.artifact_root else None
            return client.create_experiment(name, location, tags=EXPERIMENT_KIND_TAG)
        except Exception as error:
            if getattr(error, "error_code", None) == "RESOURCE_ALREADY_EXISTS":  # made meanwhile
                return client.get_experiment_by_name(name).experiment_id  # type: ignore[union-attr]
            raise UserError(
                f"tracking.uri={redact(self.uri)!r} cannot be reached: {_first_line(error)}"
            ) from error


def find_run(client: MlflowClient, run_id: str, store_uri: str) -> Run:
    """The run `run_id`; UserError telling a wrong id from a store that cannot be reached."""
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(error).lower():
            raise UserError(
                f"no run {run_id!r} in {redact(store_uri)}: check the id, or pass "
                "--tracking-uri for the store that holds it"
            ) from error
        if error.error_code == "INVALID_PARAMETER_VALUE":
            raise UserError(
                f"{run_id!r} is not a run id: run ids are 32 hex digits, as run.py prints them"
            ) from error
        reason = _first_line(error)
        raise UserError(f"{redact(store_uri)} cannot be reached: {reason}") from error


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return redact(lines[0] if lines else type(error).__name__)[:300]


def flatten(cfg: DictConfig, prefix: str = "") -> dict[str, str]:
    """The resolved config as dotted keys -> strings, the way MLflow stores params."""
    flat: dict[str, str] = {}
    for key, value in cfg.items():
        path = f"{prefix}{key!s}"
        if isinstance(value, DictConfig):
            flat.update(flatten(value, f"{path}."))
        else:
            shown = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
            flat[path] = redact(str(shown))[:_MAX_PARAM_LENGTH]
    return flat


def run_params(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, str]:
    """The params a run logs: the flattened config, without keys that say nothing about the
    model (Hydra's `_target_`, the `diagnosis` and `tracking` sections), and each config group
    its command or its trial chose (`optimizer=sgd`): the config holds the chosen file's values,
    not its name, so the runs table could not show which optimizer a trial searched."""
    params = {
        key: value
        for key, value in flatten(cfg).items()
        if not key.startswith(_HIDDEN_PARAM_SECTIONS)
        and key.rsplit(".", 1)[-1] not in _HIDDEN_PARAM_KEYS
    }
    for override in overrides:
        key, chosen, value = override.partition("=")
        if chosen and is_group(cfg, key):
            params[key] = value
    return params


def is_group(cfg: DictConfig, key: str) -> bool:
    """Whether `key` names a config group of `cfg` whose choice a run logs (`optimizer`)."""
    return OmegaConf.is_dict(cfg.get(key)) and not f"{key}.".startswith(_HIDDEN_PARAM_SECTIONS)


def clean_number(value: float) -> float:
    """`value` rounded to the digits a float32 holds: what the UI shows is what was computed."""
    return float(f"{float(value):.{SIGNIFICANT_DIGITS}g}")


@contextmanager
def tracked_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[str]:
    """Create a run and always close it: FINISHED, FAILED on an error, KILLED on Ctrl-C."""
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    run_id = run.info.run_id
    status = "FINISHED"
    try:
        if params:
            client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        yield run_id
    except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C into sys.exit(1)
        status = "KILLED"
        raise
    except BaseException as error:
        status = "FAILED"
        message = error.args[0] if isinstance(error, UserError) and error.args else repr(error)
        _quietly(client.set_tag, run_id, "error", redact(str(message))[:5000])
        raise
    finally:
        _quietly(client.set_terminated, run_id, status)


def _quietly(call: Any, *args: Any) -> None:
    # The store itself failing must not hide the error that brought us here.
    with contextlib.suppress(Exception):
        call(*args)


def final_metrics(values: Mapping[str, float]) -> list[Metric]:
    """A run's final values as MLflow metrics at step 0."""
    now_ms = int(time.time() * 1000)
    return [Metric(name, clean_number(value), now_ms, 0) for name, value in values.items()]


def redacted_tags(tags: Mapping[str, str]) -> list[RunTag]:
    return [RunTag(key, redact(str(value))) for key, value in tags.items()]


def log_metrics(
    client: MlflowClient,
    run_id: str,
    values: Mapping[str, float],
    tags: Mapping[str, str] | None = None,
) -> None:
    """Final (step 0) metrics, and optionally tags, in one write."""
    client.log_batch(run_id, metrics=final_metrics(values), tags=redacted_tags(tags or {}))


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    client.log_batch(run_id, tags=redacted_tags(tags))


def runs_url(host: str, experiment_id: str) -> str:
    """Link to an experiment's runs table in the MLflow UI's model-training view."""
    return f"{host.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def sorted_runs_url(experiment_id: str, metric: str, ascending: bool = True) -> str:
    """A link inside the UI to an experiment's runs table sorted by `metric` (best first for a
    loss): the table reads its sort from the URL (`orderByKey`, `orderByAsc`)."""
    key = quote(f"metrics.`{metric}`", safe="")
    return (
        f"#/experiments/{experiment_id}/runs?orderByKey={key}"
        f"&orderByAsc={str(ascending).lower()}&workflowType=machine_learning"
    )


def artifact_url(experiment_id: str, run_id: str, path: str) -> str:
    """A link inside the UI to one artifact of a run, open in the run's artifact viewer."""
    return f"#/experiments/{experiment_id}/runs/{run_id}/artifactPath/{quote(path)}"


def metric_chart_url(experiment_id: str, run_id: str, metrics: Sequence[str]) -> str:
    """A link inside the UI (for a run's description) to one chart of `metrics` of a run: the
    UI groups a run's metrics by prefix, so its own pages never chart train and val together."""
    query = {
        "runs": [run_id],
        "metric": metrics[-1],
        "plot_metric_keys": list(metrics),
        "experiments": [experiment_id],
    }
    encoded = "&".join(
        f"{key}={quote(json.dumps(value, separators=(',', ':')), safe='')}"
        for key, value in query.items()
    )
    # By step (epoch, trial number): by time, a run that logged at its end is one vertical line.
    return f"#/metric?{encoded}&x_axis=step&show_point=true"

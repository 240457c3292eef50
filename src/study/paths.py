"""Where the project lives, which tracking store a run uses, database URLs with their driver,
and commands to print that work from the user's folder.

Kept free of heavy imports: the command line reports bad input before loading torch or MLflow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from study.secrets import redact

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"
SCRIPTS_DIR = PROJECT_ROOT / "scripts"
DEFAULT_STORE = PROJECT_ROOT / "mlruns" / "mlflow.db"
TRACKING_ENV = "MLFLOW_TRACKING_URI"

# SQLAlchemy 2.1 picks psycopg 3 for a bare postgresql://; the driver we install is psycopg2.
_DEFAULT_DRIVERS = {"postgresql": "postgresql+psycopg2"}


def database_url(url: str) -> str:
    """`url` with an explicit driver where its scheme names none (`postgresql+psycopg2://...`)."""
    scheme, separator, rest = url.partition("://")
    return f"{_DEFAULT_DRIVERS.get(scheme, scheme)}{separator}{rest}" if separator else url


@dataclass(frozen=True)
class TrackingChoice:
    """The tracking URI a command uses and what chose it, as a user would name it."""

    uri: str
    source: str  # "tracking.uri", TRACKING_ENV or "default"

    def describe(self) -> str:
        """The URI, password masked, and what chose it unless the command line did."""
        origins = {TRACKING_ENV: f" (from {TRACKING_ENV})", "default": " (the default store)"}
        return f"{redact(self.uri)}{origins.get(self.source, '')}"


def choose_tracking_uri(given: str | None) -> TrackingChoice:
    """`given` wins; else MLFLOW_TRACKING_URI, as MLflow users expect; else the project's store.

    A local sqlite path comes back absolute, so the store is the same whatever the folder.
    """
    if given:
        uri, source = given, "tracking.uri"
    elif os.environ.get(TRACKING_ENV):
        uri, source = os.environ[TRACKING_ENV], TRACKING_ENV
    else:
        uri, source = f"sqlite:///{DEFAULT_STORE}", "default"
    if uri.startswith("sqlite:///"):
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).expanduser().resolve()}"
    return TrackingChoice(uri, source)


def store_option(tracking: TrackingChoice) -> str:
    """` --tracking-uri URI` for a command that must find the store a run used, even once
    MLFLOW_TRACKING_URI is unset; "" for the default store."""
    import shlex

    if tracking.source == "default":
        return ""
    return f" --tracking-uri {shlex.quote(redact(tracking.uri))}"


def script_command(name: str, *args: str) -> str:
    """`python scripts/NAME.py ARGS`, runnable from the current folder: args shell-quoted."""
    import shlex

    return " ".join(["python", shlex.quote(script_path(name)), *map(shlex.quote, args)])


def script_path(name: str, cwd: Path | None = None) -> str:
    """scripts/`name`.py as a user in `cwd` types it: relative, unless absolute is shorter."""
    script = SCRIPTS_DIR / f"{name}.py"
    try:
        relative = os.path.relpath(script, cwd or Path.cwd())
    except ValueError:  # another drive (Windows): no relative path exists
        return str(script)
    return relative if len(relative) <= len(str(script)) else str(script)

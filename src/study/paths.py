"""Where the project lives, and database URLs with their driver spelled out.

Kept free of heavy imports: the command line reports bad input before loading torch or MLflow.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"

# SQLAlchemy 2.1 picks psycopg 3 for a bare postgresql://; the driver we install is psycopg2.
_DEFAULT_DRIVERS = {"postgresql": "postgresql+psycopg2"}


def database_url(url: str) -> str:
    """`url` with an explicit driver where its scheme names none (`postgresql+psycopg2://...`)."""
    scheme, separator, rest = url.partition("://")
    return f"{_DEFAULT_DRIVERS.get(scheme, scheme)}{separator}{rest}" if separator else url

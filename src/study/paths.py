"""Where the project lives; database URLs, and masking of their secrets in what we print or store.

Kept free of heavy imports: the command line reports bad input before loading torch or MLflow.
"""

from __future__ import annotations

import re
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"

_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^:/@\s]*):(?P<secret>[^@/\s]+)@"
)


def redact(text: str) -> str:
    """Mask the password of every URL in `text` (`postgresql://u:secret@h` -> `...u:***@h`)."""
    return _CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)


# SQLAlchemy 2.1 picks psycopg 3 for a bare postgresql://; the driver we install is psycopg2.
_DEFAULT_DRIVERS = {"postgresql": "postgresql+psycopg2"}


def database_url(url: str) -> str:
    """`url` with an explicit driver where its scheme names none (`postgresql+psycopg2://...`)."""
    scheme, separator, rest = url.partition("://")
    return f"{_DEFAULT_DRIVERS.get(scheme, scheme)}{separator}{rest}" if separator else url

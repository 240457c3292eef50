"""Where the project lives; database URLs, and masking of their secrets in what we print or store.

Kept free of heavy imports: the command line reports bad input before loading torch or MLflow.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"

# user:password@ after the scheme, also as Hydra escapes it in overrides (`postgresql\://u\:pw@`)
_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-zA-Z][\w+.-]*\\?://)(?P<user>[^:/@\s\\]*)(?P<colon>\\?:)(?P<secret>[^@/\s]+)@"
)
_PASSWORD_PARAMETER = re.compile(r"(?P<key>[?&]password=)[^&\s'\"]+", re.IGNORECASE)


def redact(text: str) -> str:
    """Mask the password of every URL in `text` (`postgresql://u:secret@h` -> `...u:***@h`)."""
    text = _CREDENTIALS.sub(r"\g<scheme>\g<user>\g<colon>***@", text)
    return _PASSWORD_PARAMETER.sub(r"\g<key>***", text)


# SQLAlchemy 2.1 picks psycopg 3 for a bare postgresql://; the driver we install is psycopg2.
_DEFAULT_DRIVERS = {"postgresql": "postgresql+psycopg2"}


def database_url(url: str) -> str:
    """`url` with an explicit driver where its scheme names none (`postgresql+psycopg2://...`)."""
    scheme, separator, rest = url.partition("://")
    return f"{_DEFAULT_DRIVERS.get(scheme, scheme)}{separator}{rest}" if separator else url


def mask_log_records() -> None:
    """Mask passwords in every log record from now on, whatever handlers log it.

    A record factory rather than a handler filter: Hydra replaces the handlers for each job.
    """
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "masks_credentials", False):
        return

    def masked_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed format: the handler reports it as usual
            return record
        if redact(message) != message:
            record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:  # formatters reuse exc_text when it is set
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    masked_record.masks_credentials = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(masked_record)

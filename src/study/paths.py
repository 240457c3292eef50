"""Where the project lives, and masking of secrets in anything we print or store.

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

"""Whether output may redraw itself: a terminal that understands cursor codes."""

from __future__ import annotations

import os
from typing import TextIO


def redraws(stream: TextIO) -> bool:
    """A terminal, not TERM=dumb (Emacs shells, some CI consoles), nor NO_COLOR (a user who
    asked for plain output): only then do we print carriage returns and escape codes."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # no such method, or a closed stream
        return False
    return tty and os.environ.get("TERM") != "dumb" and not os.environ.get("NO_COLOR")

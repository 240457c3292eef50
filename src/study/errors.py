"""The one exception type that means "the user asked for something we cannot do"."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: printed as one line (no traceback) and the command exits with code 2."""

    exit_code = 2

"""The one exception type that means "the user asked for something we cannot do"."""

from __future__ import annotations

import sys
import traceback

from study.paths import redact


class UserError(Exception):
    """Bad input: printed as one line (no traceback) and the command exits with code 2."""

    exit_code = 2


def report(error: BaseException) -> int:
    """Print `error` on stderr with credentials masked and return the command's exit code.

    Bad input is one line; anything else is a bug, shown with its traceback (exit code 1):
    exception texts from database drivers and HTTP clients may quote the URLs they were given.
    """
    if isinstance(error, UserError):
        print(f"error: {redact(str(error))}", file=sys.stderr)
        return error.exit_code
    print(redact("".join(traceback.format_exception(error))), end="", file=sys.stderr)
    return 1

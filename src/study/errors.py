"""UserError: the user asked for something we cannot do; how errors reach the console."""

from __future__ import annotations

import argparse
import errno
import sys
import traceback
from typing import NoReturn

from study.secrets import redact


class UserError(Exception):
    """Bad input: printed as one line (no traceback) and the command exits with code 2."""

    exit_code = 2


# A full disk or a read-only folder: the machine's state, not a bug; one line says which.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _environment_error(error: BaseException) -> str | None:
    """`path: cause` for a file the command could not create or write, else None."""
    if not isinstance(error, OSError) or not error.strerror:
        return None
    if error.filename is None and error.errno not in _ENVIRONMENT_ERRNOS:
        return None
    return f"{error.filename}: {error.strerror}" if error.filename else error.strerror


def report(error: BaseException) -> int:
    """Print `error` on stderr with credentials masked and return the command's exit code.

    Bad input is one line; anything else is a bug, shown with its traceback (exit code 1):
    exception texts from database drivers and HTTP clients may quote the URLs they were given.
    """
    if isinstance(error, UserError):
        print(f"error: {redact(str(error))}", file=sys.stderr)
        return error.exit_code
    environment = _environment_error(error)
    if environment is not None:
        print(f"error: {redact(environment)}", file=sys.stderr)
        return UserError.exit_code
    print(redact("".join(traceback.format_exception(error))), end="", file=sys.stderr)
    return 1


class OneLineParser(argparse.ArgumentParser):
    """argparse for scripts/: a usage error is one line and exit code 2, like all bad input."""

    def error(self, message: str) -> NoReturn:
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
        raise UserError(f"{message} (usage: {usage})")

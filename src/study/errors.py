"""UserError: the user asked for something we cannot do; how errors reach the console."""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import NoReturn

from study.secrets import redact


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


class OneLineParser(argparse.ArgumentParser):
    """argparse for scripts/: a usage error is one line and exit code 2, like all bad input."""

    def error(self, message: str) -> NoReturn:
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
        raise UserError(f"{message} (usage: {usage})")

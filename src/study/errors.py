"""A command and its console: UserError (the user asked for something we cannot do), how errors
reach the console, whether output may redraw itself, a quick exit once the work is done, and a
clean one when interrupted."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import NoReturn, TextIO

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


def exit_now(code: int) -> NoReturn:
    """`sys.exit(code)` without the second Python spends tearing down torch, Lightning, MLflow
    and SQLAlchemy module by module (measured here: 0.9-1.1 s per process, at the end of every
    command and of every sweep worker, after everything was written).

    What an exit must still do happens first: atexit handlers (logging flushes its files there)
    and buffered output. Where a non-daemon thread still runs, the usual exit waits for it.
    """
    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()  # the handlers the interpreter would run at exit
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a pipe nobody reads anymore
            code = code or 1
    os._exit(code)


@contextlib.contextmanager
def interrupt_once(note: str = "") -> Iterator[None]:
    """Inside: SIGINT and SIGTERM raise KeyboardInterrupt the first time; a later one only
    writes `note` on stderr, so that it cannot cut short the clean-up the first one started
    (workers closing their runs, trials failed, the parent run closed). An impatient second
    Ctrl-C used to leave trials RUNNING. Handlers are restored on leaving."""
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.getsignal(signum) for signum in signals}

    def again(signum: int, frame: object) -> None:
        if note:  # os.write: a print here could re-enter a print the handler interrupted
            os.write(2, f"{note}\n".encode())

    def first(signum: int, frame: object) -> None:
        for each in signals:
            signal.signal(each, again)
        raise KeyboardInterrupt

    for signum in signals:
        signal.signal(signum, first)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def redraws(stream: TextIO) -> bool:
    """A terminal, not TERM=dumb (Emacs shells, some CI consoles), nor NO_COLOR (a user who
    asked for plain output): only then do we print carriage returns and escape codes."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # no such method, or a closed stream
        return False
    return tty and os.environ.get("TERM") != "dumb" and not os.environ.get("NO_COLOR")

"""Leaving a process: quickly once its work is done, and cleanly when interrupted."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import NoReturn


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

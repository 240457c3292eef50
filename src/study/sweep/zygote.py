"""A preloaded fork server: one process per host imports what a sweep worker imports (torch,
MLflow, Optuna; Lightning too when trials train one at a time) once, then forks each worker on
request, replacements after a crash included. A study's start costs about one import, not one
per worker, and several workers no longer import at once on the same cores.

`python -m study.sweep.zygote CONTROL_FD SWEEP_PID [MODULE ...]`: imports MODULEs, then serves
requests on CONTROL_FD (a SOCK_SEQPACKET Unix socket: one JSON message each, the worker's stdin and
events pipes passed along as file descriptors) and reports each worker's pid as it forks and
its exit code as it ends. It exits when the sweep closes the socket or dies.

Forking after these imports is safe because the server only imports: it runs no tensor op (no
intra-op thread pool exists to copy), never touches CUDA (each child sets its own
CUDA_VISIBLE_DEVICES and creates its context itself), and opens no database connection, MLflow
client or file the children would share. Each child sets its thread count (torch.set_num_threads
in the worker) and opens its own stores, as a worker started from scratch does.

The sweep keeps the contract it has with a worker started by `python -m study.sweep.worker`:
its stdin commands, its events pipe, its log, a pid it can signal, and its exit code (from the
server, which is the worker's parent and waits for it). A worker dies with the server, and the
server with the sweep (PR_SET_PDEATHSIG), as a worker started directly dies with the sweep.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, NoReturn

ZYGOTE_MODULE = "study.sweep.zygote"
MESSAGE_SIZE = 1 << 16


class ForkedProcess:
    """A worker forked by the server, handled as a subprocess.Popen is: stdin, pid, poll(),
    wait(), terminate(), kill(), returncode."""

    def __init__(self, server: ForkServer, pid: int, stdin: IO[bytes]) -> None:
        self.server = server
        self.pid = pid
        self.stdin: IO[bytes] | None = stdin
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
            self.server.wait_for_exit(min(left, 0.5) if left is not None else 0.5)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:  # a pid reaped by the server may belong to another process now
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The sweep's end of a fork server: started at once, it imports while the sweep goes on;
    `spawn` waits for it to be ready. Close it after its workers have exited."""

    def __init__(
        self, preload: Sequence[str], env: Mapping[str, str], log_path: Path | None = None
    ) -> None:
        self.socket, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    ZYGOTE_MODULE,
                    str(theirs.fileno()),
                    str(os.getpid()),
                    *preload,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(theirs.fileno(),),
                env={**env, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # as workers: Ctrl-C reaches the sweep only
            )
        finally:
            theirs.close()
            if not isinstance(log, int):
                log.close()
        self.spawning = threading.Lock()  # one request at a time: replies come in order
        self.forked: queue.Queue[int | None] = queue.Queue()
        self.changed = threading.Condition()
        self.exits: dict[int, int] = {}
        self.gone = False
        self.reader = threading.Thread(target=self._read, name="fork-server", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.socket.recv(MESSAGE_SIZE)
            except OSError:
                data = b""
            if not data:
                break
            message = json.loads(data)
            if "forked" in message:
                self.forked.put(int(message["forked"]))
            else:
                with self.changed:
                    self.exits[int(message["exited"])] = int(message["code"])
                    self.changed.notify_all()
        with self.changed:
            self.gone = True
            self.changed.notify_all()
        self.forked.put(None)

    def spawn(
        self, args: Sequence[str], env: Mapping[str, str], log_path: Path, events_fd: int
    ) -> ForkedProcess | None:
        """A worker `python -m study.sweep.worker ARGS` forked from the server, with `env` set,
        its output appended to `log_path` and `events_fd` (the events pipe's writing end: the
        caller closes its copy) as ARGS' last item names it; None if the server is gone."""
        stdin_read, stdin_write = os.pipe()
        request = {"args": list(args), "env": dict(env), "log": str(log_path)}
        try:
            with self.spawning:
                if self.gone:
                    raise OSError("the fork server is gone")
                socket.send_fds(
                    self.socket, [json.dumps(request).encode()], [stdin_read, events_fd]
                )
                pid = self.forked.get()
        except OSError:
            pid = None
        finally:
            os.close(stdin_read)
        if pid is None:
            os.close(stdin_write)
            return None
        return ForkedProcess(self, pid, os.fdopen(stdin_write, "wb"))

    def exit_code(self, pid: int) -> int | None:
        with self.changed:
            if pid in self.exits:
                return self.exits[pid]
            if not self.gone:
                return None
        # The server died first: its children were sent SIGTERM (PR_SET_PDEATHSIG), and
        # whoever adopted them reaps them (or leaves them zombies), not telling us the code.
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return -signal.SIGTERM
        return -signal.SIGTERM if state in ("Z", "X") else None

    def wait_for_exit(self, timeout: float) -> None:
        with self.changed:
            self.changed.wait(timeout)

    def close(self, grace_s: float = 10) -> None:
        """End the server, once its workers have exited (it may still be importing: a study
        refused before its first worker must not wait for that)."""
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)
        self.process.terminate()
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.socket.close()


# --- the server process -------------------------------------------------------------------


def serve(control: socket.socket, parent: int, preload: Sequence[str]) -> int:
    die_with_parent(parent)
    for name in preload:
        importlib.import_module(name)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # a child could not use CUDA
        raise RuntimeError(f"importing {preload} created a CUDA context: cannot fork workers")
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes select() via the fd
    while True:
        readable, _, _ = select.select([control.fileno(), wake_read], [], [])
        if wake_read in readable:
            os.read(wake_read, 1 << 12)
        report_exits(control)
        if control.fileno() in readable:
            message, fds, _, _ = socket.recv_fds(control, MESSAGE_SIZE, 2)
            if not message:
                return 0  # the sweep closed its end: no more workers
            request = json.loads(message)
            server = os.getpid()
            pid = os.fork()
            if pid == 0:
                become_worker(control, request, fds, (wake_read, wake_write), server)
            for fd in fds:
                os.close(fd)
            control.send(json.dumps({"forked": pid}).encode())


def report_exits(control: socket.socket) -> None:
    """Reap the workers that have exited and tell the sweep their exit codes (as Popen's:
    -N for a worker ended by signal N)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):
            control.send(json.dumps({"exited": pid, "code": code}).encode())


def become_worker(
    control: socket.socket,
    request: dict,
    fds: list[int],
    server_fds: Sequence[int],
    server: int,
) -> NoReturn:
    """In the forked child: take the worker's pipes, log and environment, run it, and exit
    (never return into the server's loop)."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in server_fds:
            os.close(fd)
        control.close()
        os.setsid()  # as a worker started directly: a session of its own
        # The server's pid from before the fork: had it died since, getppid() would name the
        # process that adopted us, and the worker would outlive its sweep, waiting for "start".
        die_with_parent(server)  # the worker sets it again once started
        stdin_read, events_fd = fds
        os.dup2(stdin_read, 0)
        os.close(stdin_read)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.environ.update(request["env"])
        args = [*request["args"][:-1], str(events_fd)]
        from study.sweep.spec import WORKER_MODULE
        from study.sweep.worker import entry

        # What the worker would see as `python -m study.sweep.worker ARGS`.
        sys.argv = [WORKER_MODULE, *args]
        sys.orig_argv = [sys.executable, "-m", WORKER_MODULE, *args]
        code = entry(args)
        for thread in threading.enumerate():  # as the interpreter's own exit waits for them
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
    except SystemExit as exit_:  # e.g. the sweep closed the events pipe: the message, code 1
        if isinstance(exit_.code, int):
            code = exit_.code
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()  # the handlers an exiting interpreter runs (log files)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


def die_with_parent(parent: int) -> None:
    """Linux: get SIGTERM when the sweep (pid `parent`) dies; its workers then get theirs."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # the sweep died before that took effect
        sys.exit(0)


if __name__ == "__main__":
    control_fd, parent_pid, *modules = sys.argv[1:]
    sys.exit(serve(socket.socket(fileno=int(control_fd)), int(parent_pid), modules))

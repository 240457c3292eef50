"""Device slots and the pool of long-lived worker processes that run a study's trials.

Each worker is pinned to its device through CUDA_VISIBLE_DEVICES before it imports torch, and
starts its next trial as soon as its last one ends: no batch barrier. Workers claim trials
themselves (study.sweep.claims), so the study ends with exactly n_trials finished trials however
many workers race for the last ones; the pool only says "go on" or "stop", and replaces workers
that die.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from study.sweep.budget import Budget
from study.sweep.devices import DeviceSlot, threads_per_worker
from study.sweep.spec import (
    WORKER_MODULE,
    Command,
    Event,
    Exhausted,
    Finished,
    Lost,
    Ready,
    Started,
    Trained,
    decode_event,
    send_command,
)
from study.sweep.zygote import ForkedProcess, ForkServer

MAX_REPLACEMENTS_PER_SLOT = 3


class EventPipe:
    """The parent's end of a worker's events pipe, read in whole lines with none left behind.

    A buffered reader would read ahead: two events that arrive together (a pack's trial ends,
    the next one starts) become one readable signal from select() and one line read, and the
    other waits in the reader's buffer, where select() never reports it. The worker then waits
    for the go-ahead that answers it, and the study hangs.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.partial = b""
        self.closed = False

    def fileno(self) -> int:
        return self.fd

    def read_lines(self) -> list[str] | None:
        """The whole lines that have arrived (one read: call it when select() says readable);
        None once the worker closed its end."""
        data = os.read(self.fd, 1 << 16)
        if not data:
            return None
        *lines, self.partial = (self.partial + data).split(b"\n")
        return [line.decode() for line in lines if line]

    def rest(self) -> list[str]:
        """Every line not read yet, up to the end: for a worker that has exited."""
        lines: list[str] = []
        while (more := self.read_lines()) is not None:
            lines += more
        return lines

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


@dataclass
class Worker:
    slot: DeviceSlot
    process: subprocess.Popen[bytes] | ForkedProcess
    events: EventPipe
    log_path: Path
    trials: set[int] = field(default_factory=set)  # the trials it runs, as it said
    freed: set[int] = field(default_factory=set)  # of them, those trained and being closed
    held: int = 0  # go-aheads it earned and waits for while the study's figures catch up
    ready: bool = False  # it finished starting up (imports, study loaded)
    exhausted: bool = False  # it found every trial taken and exits
    done: bool = False

    def send(self, command: Command) -> None:
        assert self.process.stdin is not None
        send_command(self.process.stdin, command)


def worker_log(log_dir: Path, slot: DeviceSlot) -> Path:
    return log_dir / f"worker_{slot.index}.log"


def start_worker(
    slot: DeviceSlot,
    spec_path: Path,
    log_dir: Path,
    threads: int,
    server: ForkServer | None = None,
) -> Worker:
    """A worker process for `slot`: forked from the host's fork `server` (its imports done),
    or else started from scratch (it imports what it needs, ~4 s). It waits for "start"
    before it reads `spec_path`: it may be started before the spec is written."""
    read_fd, write_fd = os.pipe()
    env = {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "STUDY_WORKER_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }
    if slot.device is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot.device
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = worker_log(log_dir, slot)
    args = [str(spec_path), str(slot.index), str(write_fd)]
    process: subprocess.Popen[bytes] | ForkedProcess | None = None
    if server is not None:
        process = server.spawn(args, env, log_path, write_fd)
    if process is None:  # no fork server, or it is gone: a worker of its own
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, *args],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                env={**os.environ, **env},
                start_new_session=True,  # Ctrl-C reaches the parent, which stops workers in order
            )
    os.close(write_fd)
    return Worker(slot, process, EventPipe(read_fd), log_path)


# What a worker imports on first use, not when it is imported: torch.optim's first optimizer
# imports torch._dynamo (~1.4 s), an MLflow client on a database its SQL store (~0.8 s). Left to
# the forked workers, each would import them again (4 workers on 2 cores: ~2 s longer studies).
FIRST_USE_IMPORTS = ["torch._dynamo", "mlflow.store.tracking.sqlalchemy_store"]


def worker_imports(packed: bool) -> list[str]:
    """What a worker imports before its first trial ends: a fork server preloads it. Workers
    that train one trial at a time train through Lightning; packed ones never import it."""
    return [WORKER_MODULE, *([] if packed else ["study.train"]), *FIRST_USE_IMPORTS]


SPEC_FILE = ".worker_spec.json"  # in the sweep folder; holds the real URLs, owner-only
FORK_SERVER_LOG = "fork_server.log"


class EarlyWorkers:
    """Workers started as soon as the plan is checked, so that their imports (~4 s) overlap
    the parent's (MLflow) and its opening of the study and the parent run (~1.5 s here); or,
    with `fork_server`, the host's fork server (study.sweep.zygote), importing `preload` once,
    from which the Scheduler forks each worker when it needs one.

    The Scheduler adopts them slot by slot; whatever it does not take is stopped on leaving
    the `with` block, before reading the spec: the empty logs (and the sweep folder) they made
    are removed. The fork server is closed on leaving it, once the study's workers are gone.
    """

    def __init__(
        self,
        slots: Sequence[DeviceSlot],
        sweep_dir: Path,
        threads: int,
        fork_server: bool = False,
        preload: Sequence[str] = (WORKER_MODULE,),
    ) -> None:
        self.new_folder = None if sweep_dir.exists() else sweep_dir
        self.new_logs = {log for s in slots if not (log := worker_log(sweep_dir, s)).exists()}
        self.server: ForkServer | None = None
        self.waiting: dict[DeviceSlot, Worker] = {}
        if fork_server:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            self.server_log = sweep_dir / FORK_SERVER_LOG
            if not self.server_log.exists():
                self.new_logs.add(self.server_log)
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            self.server = ForkServer(preload, env, self.server_log)
            return
        spec_path = sweep_dir / SPEC_FILE
        self.waiting = {slot: start_worker(slot, spec_path, sweep_dir, threads) for slot in slots}

    def __enter__(self) -> EarlyWorkers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_the_rest()
        if self.server is not None:
            self.server.close()
            self.server = None
            self._remove_what_stayed_empty({self.server_log})

    def take(self, slot: DeviceSlot) -> Worker | None:
        return self.waiting.pop(slot, None)

    def stop_the_rest(self) -> None:
        for worker in self.waiting.values():
            worker.process.terminate()  # still importing, or waiting for "start": it just ends
        for worker in self.waiting.values():
            try:
                worker.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            worker.events.close()
            if worker.process.stdin is not None:
                worker.process.stdin.close()
        if self.server is None:
            self._remove_what_stayed_empty({worker.log_path for worker in self.waiting.values()})
        self.waiting.clear()

    def _remove_what_stayed_empty(self, logs: set[Path]) -> None:
        """The `logs` this made that stayed empty, and the sweep folder if it made it and
        nothing else is in it."""
        for log in logs & self.new_logs:
            with contextlib.suppress(OSError):
                if log.stat().st_size == 0:
                    log.unlink()
        if self.new_folder is not None:
            with contextlib.suppress(OSError):  # not empty: the study ran in it
                self.new_folder.rmdir()


@dataclass
class Scheduler:
    """Runs the workers, keeps them going, and replaces any that die.

    The parent stops the workers when the study is interrupted or too many trials failed. A
    worker that dies mid-trial is reported through `on_worker_lost` (which fails its trials and
    queues their retries) and replaced on the same device.
    """

    slots: Sequence[DeviceSlot]
    spec_path: Path
    log_dir: Path
    max_failures: int
    on_event: Callable[[Event], None] = lambda event: None
    on_worker_lost: Callable[[int], None] = lambda number: None
    threads: int | None = None  # torch threads per worker; None: the cores shared out
    selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    workers: list[Worker] = field(default_factory=list)
    failed_here: int = 0
    replaced: int = 0
    stop_reason: str | None = None

    early: EarlyWorkers | None = None  # workers started while the parent opened the study
    budget: Budget = field(default_factory=Budget)  # sweep.timeout: no trial starts after it
    # Whether the study owes too much closing work (its figures) to start a trial now.
    hold: Callable[[], bool] = lambda: False

    def __post_init__(self) -> None:
        self.threads = self.threads or threads_per_worker(len(self.slots))

    def _start(self, slot: DeviceSlot) -> None:
        assert self.threads is not None
        worker = self.early.take(slot) if self.early else None
        server = self.early.server if self.early else None
        worker = worker or start_worker(slot, self.spec_path, self.log_dir, self.threads, server)
        worker.send(Command.START)  # the spec is written
        self.workers.append(worker)
        self.selector.register(worker.events, selectors.EVENT_READ, worker)

    def _go_on(self, worker: Worker, first: bool = False) -> None:
        """Say "trial" or "stop" to `worker`; its `first` pack starts whatever the budget."""
        if worker.exhausted:
            return  # it reads no more commands
        if self.failed_here >= self.max_failures:
            self.stop_reason = (
                f"{self.failed_here} trials failed (sweep.max_failures={self.max_failures}): "
                f"see the error tag of the failed runs and the worker logs in {self.log_dir}"
            )
        out_of_time = not first and self.budget.spent()
        if not (first or self.stop_reason or out_of_time) and self.hold():
            worker.held += 1  # given by _release once the figures caught up
            return
        worker.send(Command.STOP if self.stop_reason or out_of_time else Command.TRIAL)

    def _release(self) -> None:
        """The go-aheads held back, once the figures caught up (or the budget ran out)."""
        for worker in self.workers:
            while worker.held and not worker.done and (self.budget.spent() or not self.hold()):
                worker.held -= 1
                self._go_on(worker)

    def _handle(self, worker: Worker, event: Event) -> None:
        if isinstance(event, Ready):
            worker.ready = True
            for _ in range(event.slots):
                self._go_on(worker, first=True)
        elif isinstance(event, Started):
            worker.trials.add(event.number)
        elif isinstance(event, Trained):  # a pack's slot is free: its closing goes on meanwhile
            worker.freed.add(event.number)
            self._go_on(worker)
        elif isinstance(event, Finished):
            worker.trials.discard(event.number)
            self.failed_here += event.state == "FAIL"
            if event.number in worker.freed:
                worker.freed.discard(event.number)  # its go-ahead went with Trained
            else:
                self._go_on(worker)
        elif isinstance(event, Exhausted):
            worker.exhausted = True  # it takes no more trials; nothing to replace it for
        self.on_event(event)

    def run(self) -> None:
        try:
            for slot in self.slots:
                self._start(slot)
            if self.early:
                self.early.stop_the_rest()  # more than the trials left need
            while any(not worker.done for worker in self.workers):
                # Figures catch up without an event to wake us: look again soon while held.
                held = any(worker.held for worker in self.workers)
                for key, _ in self.selector.select(timeout=0.05 if held else 1.0):
                    worker = key.data
                    lines = worker.events.read_lines()
                    if lines is None:  # the worker closed its end: it exited
                        self._retire(worker)
                    for line in lines or []:
                        self._handle(worker, decode_event(line))
                for worker in list(self.workers):
                    if not worker.done and worker.process.poll() is not None:
                        self._retire(worker)
                self._release()
        finally:
            self.shutdown()

    def _retire(self, worker: Worker) -> None:
        if worker.done:
            return
        worker.done = True
        self.selector.unregister(worker.events)
        code = worker.process.wait()
        # What it said before it exited may still sit in the pipe: its last trials' ends.
        for line in worker.events.rest():
            self._handle(worker, decode_event(line))
        worker.events.close()
        if code == 0 and not worker.trials:
            return
        if not worker.ready and code > 0:  # it failed to start: another would fail the same way
            self.stop_reason = self.stop_reason or (
                f"worker {worker.slot.index} exited with code {code} while starting: "
                f"see {worker.log_path}"
            )
            return
        # Killed (or crashed) mid-trial: fail its trials, then carry on with a fresh worker.
        for number in sorted(worker.trials):
            self.failed_here += 1
            self.on_worker_lost(number)
            self.on_event(Lost(number, code))
        if self.replaced >= MAX_REPLACEMENTS_PER_SLOT * len(self.slots):
            self.stop_reason = self.stop_reason or f"workers died {self.replaced} times: giving up"
        if not self.stop_reason and not self.budget.spent():  # a rerun retries its trials
            self.replaced += 1
            self._start(worker.slot)

    def shutdown(self, grace_s: float = 10) -> None:
        """Stop every worker: ask, then SIGTERM (runs close KILLED), then SIGKILL."""
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.send(Command.STOP)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.terminate()
        for worker in self.workers:
            try:
                worker.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            if not worker.done:
                worker.done = True
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self.selector.unregister(worker.events)
                worker.events.close()

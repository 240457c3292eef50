"""Packed trials' curves.png drawn by the sweep's parent and its helpers, off the workers' paths.

Drawing a trial's figure takes 60-80 ms of matplotlib (and importing it a second), which would
stall every trial training beside it in a pack. So a packed worker sends each finished trial's
curves to the sweep's parent as an event (spec.CurvesDue), and the parent hands them to
low-priority helper processes (`python -m study.sweep.curves_writer`, a JSON line per trial on
their stdin) that only draw curves.png, importing nothing but matplotlib (~0.4 s of CPU to
start, against ~2.6 s with MLflow and its SQL store). Told that a figure is drawn, the parent
logs it to the trial's run, then rewrites the run's description to name it: a description
never names a file the run does not have yet. The parent waits for the helpers after it wrote
the study's own figures, at the study's end.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from study.sweep.spec import Event

_KEYS = ("epoch", "train/loss", "val/loss")  # what the figure draws
_NICENESS = 19  # the lowest priority: the helper draws when the trainers leave a core idle


@dataclass(frozen=True)
class CurvesJob:
    """One trial's figure: where to draw it, what to draw, and the run to log it to."""

    run_id: str
    path: str  # the PNG to write (the trial's output folder)
    title: str
    verdict: str
    reason: str
    baseline: float
    history: list[dict[str, float]]
    note: str  # the run's description naming the figure, set once the figure is logged

    @classmethod
    def of(
        cls,
        run_id: str,
        path: Path,
        title: str,
        verdict: str,
        reason: str,
        baseline: float,
        history: Sequence[Mapping[str, float]],
        note: str,
    ) -> CurvesJob:
        rows = [{key: float(row[key]) for key in _KEYS if key in row} for row in history]
        return cls(run_id, str(path), title, verdict, reason, baseline, rows, note)


class CurvesWriter:
    """The helper process, a thread that feeds it (`submit` never waits on a full pipe), and a
    thread that hears each figure drawn and logs it to its run with `client`."""

    def __init__(self, client: MlflowClient) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "study.sweep.curves_writer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.client = client
        self.pending: deque[CurvesJob] = deque()  # submitted, in order, not answered yet
        self.drawn = 0  # figures drawn and logged, or given up on
        self._jobs: queue.SimpleQueue[CurvesJob | None] = queue.SimpleQueue()
        self._feeder = threading.Thread(target=self._feed, name="curves-feeder", daemon=True)
        self._feeder.start()
        self._hearer = threading.Thread(target=self._hear, name="curves-hearer", daemon=True)
        self._hearer.start()

    def submit(self, job: CurvesJob) -> None:
        self.pending.append(job)
        self._jobs.put(job)

    @property
    def backlog(self) -> int:
        """Figures submitted and not drawn yet."""
        return len(self.pending)

    def close(self, timeout_s: float = 300) -> None:
        """Wait until every submitted figure is drawn and logged (or `timeout_s` passed)."""
        self._jobs.put(None)
        self._feeder.join(timeout_s)
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._hearer.join(timeout_s)

    def abort(self) -> None:
        """Stop now (the study is being stopped): figures not drawn yet are not drawn."""
        self._process.kill()
        self._process.wait()

    def _feed(self) -> None:
        stdin: IO[str] | None = self._process.stdin
        assert stdin is not None
        try:
            while (job := self._jobs.get()) is not None:
                stdin.write(json.dumps(asdict(job)) + "\n")
                stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the helper is gone (aborted): nothing left to tell it
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def _hear(self) -> None:
        stdout: IO[str] | None = self._process.stdout
        assert stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for line in stdout:  # a line per job, in order: "drawn", or "failed" (reported)
                job = self.pending[0]
                if line.strip() == DRAWN:
                    log_figure(self.client, job)
                self.pending.popleft()  # after logging: backlog counts it until then
                self.drawn += 1


class CurvesFromWorkers:
    """The parent's side. The first figures wait in the parent; once `helpers_at` wait, helper
    processes start and take them all, round robin. What still waits at the study's end, the
    parent draws itself (matplotlib is loaded by then): a helper's start (~0.4 s of CPU) costs
    more than a small study's few figures (60-80 ms each), and would land on the study's end.

    Low-priority helpers draw little while the trials train on every core, so most figures are
    drawn at the study's end: a helper per core, up to `most`, shares them out then.
    """

    def __init__(self, tracking_uri: str, helpers_at: int = 12, most: int = 4) -> None:
        self.tracking_uri = tracking_uri
        self._client: MlflowClient | None = None
        self.helpers_at = helpers_at
        self.helpers = max(1, min(most, os.cpu_count() or 1))
        self.writers: list[CurvesWriter] = []
        self.waiting: list[CurvesJob] = []
        self.sent = 0

    def on_event(self, event: Event) -> None:
        from study.sweep.spec import CurvesDue  # not in the helpers: it imports Optuna

        if not isinstance(event, CurvesDue):
            return
        self.waiting.append(CurvesJob(**event.job))
        if not self.writers and len(self.waiting) >= self.helpers_at:
            self.writers = [CurvesWriter(self.client()) for _ in range(self.helpers)]
        for job in self.waiting if self.writers else []:
            self.writers[self.sent % len(self.writers)].submit(job)
            self.sent += 1
        if self.writers:
            self.waiting = []

    def client(self) -> MlflowClient:
        """The client that logs the figures: one for the parent's helpers and itself."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def backlog(self) -> int:
        """Figures heard of and not drawn yet."""
        return len(self.waiting) + sum(writer.backlog for writer in self.writers)

    def too_far_behind(self) -> bool:
        """More figures owed than the helpers draw in half a second or so: under a time budget
        no trial starts meanwhile (study.sweep.pool.Scheduler.hold), so that the study ends
        with its budget, not a drawing backlog later."""
        return self.backlog() > max(self.helpers_at, 6 * len(self.writers))

    def then(self, on_event: Callable[[Event], None]) -> Callable[[Event], None]:
        """Hear each event, then pass it on to `on_event`."""

        def both(event: Event) -> None:
            self.on_event(event)
            on_event(event)

        return both

    def draw_waiting(self) -> None:
        """Draw and log the figures waiting here (a study too small for helpers), while the
        helpers draw theirs."""
        for job in self.waiting:
            if draw_figure(job):
                log_figure(self.client(), job)
        self.waiting = []

    def close(self) -> None:
        """Every figure heard of drawn and logged."""
        self.draw_waiting()
        for writer in self.writers:
            writer.close()
        self.writers = []

    def abort(self) -> None:
        """Figures not drawn yet are not drawn (the study was interrupted)."""
        for writer in self.writers:
            writer.abort()
        self.writers, self.waiting = [], []


DRAWN, FAILED = "drawn", "failed"  # a helper's answer to each job, in order


def draw_figure(job: CurvesJob) -> bool:
    """Draw `job`'s curves.png; False (reported) if it could not be drawn: the others still
    get theirs."""
    from study.plots import plot_curves

    try:
        plot_curves(
            job.history,
            Path(job.path),
            title=job.title,
            verdict=job.verdict,
            note=job.reason,
            baseline=job.baseline,
        )
    except Exception as error:
        print(f"curves.png of run {job.run_id} not drawn: {error}", file=sys.stderr)
        return False
    return True


def log_figure(client: MlflowClient, job: CurvesJob) -> None:
    """Log `job`'s drawn curves.png to its run, then name it in the run's description; a run
    that cannot take it is reported, not fatal."""
    from study.secrets import redact
    from study.tracking import NOTE_TAG

    try:
        client.log_artifact(job.run_id, job.path)
        client.set_tag(job.run_id, NOTE_TAG, redact(job.note))
    except Exception as error:
        print(f"curves.png of run {job.run_id} not logged: {redact(str(error))}", file=sys.stderr)


def serve(lines: Iterable[str]) -> int:
    """Draw each job read from `lines`, answering DRAWN or FAILED on stdout for each."""
    os.nice(_NICENESS)
    # Ctrl-C reaches the whole process group: the parent decides (abort) whether we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for line in lines:
        print(DRAWN if draw_figure(CurvesJob(**json.loads(line))) else FAILED, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.stdin))

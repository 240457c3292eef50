"""A session's time budget, `sweep.timeout`: no trial starts once it is spent.

Trials already training when the budget runs out finish, as in Optuna's `optimize(timeout=)`;
they are not stopped at the next epoch boundary. A trial cut short would enter the study with a
value that is not its early-stopping point (pruned: the pruner's statistics and TPE's "bad"
group take a truncated curve as a hopeless one; failed: it would be retried, its epochs spent
twice), and its run would hold a curve that no rerun of its config reproduces. Finishing costs
at most one trial's (one pack's) length past the budget, and the figures of the packed trials
in flight: under a budget, no trial starts while the study's figures are behind
(study.sweep.curves_writer.CurvesFromWorkers.too_far_behind), so no drawing backlog is left.

Each worker takes its first trial (fills its pack once) whatever the clock says: a session
always makes progress, so a rerun (which gets a fresh budget) moves the study on even when the
budget is shorter than the start-up, and the overshoot keeps the same bound.

The clock is this host's, from the moment this host's sweep started: hosts that join a study
late each search for `sweep.timeout` seconds of their own. `time.monotonic()` reads one clock
for every process of a Linux host (CLOCK_MONOTONIC), so the parent hands its workers a deadline
on that clock.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from study.errors import UserError


def check_timeout(value: Any) -> float | None:
    """`sweep.timeout` as seconds, or None for no budget; UserError unless a number > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(
            f"sweep.timeout={value!r} is not allowed: use null or a number of seconds > 0"
        )
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"sweep.timeout={value!r} is out of range: use null or seconds > 0")
    return float(value)


@dataclass(frozen=True)
class Budget:
    """A session's budget on this host's monotonic clock; `deadline` None: no budget."""

    timeout_s: float | None = None
    deadline: float | None = None

    @classmethod
    def start(cls, timeout_s: float | None, started: float | None = None) -> Budget:
        """The budget of a session that started at `started` (time.monotonic(); None: now)."""
        if timeout_s is None:
            return cls()
        return cls(timeout_s, (time.monotonic() if started is None else started) + timeout_s)

    def spent(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def left_s(self) -> float | None:
        """Seconds left (0 once spent); None without a budget."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())


def deadline_passed(deadline: float | None) -> bool:
    """For a worker, given its parent's deadline (WorkerSpec.deadline)."""
    return Budget(deadline=deadline).spent()


def ended_note(study_name: str, budget: Budget, ran: int, finished: int, n_trials: int) -> str:
    """The summary's line for a study whose budget ended it before n_trials finished."""
    return (
        f"study {study_name}: the time budget (sweep.timeout={budget.timeout_s:g} s) ended "
        f"it: {ran} trials ran in this session, {finished}/{n_trials} finished; rerun the "
        "same command to go on with a fresh budget"
    )

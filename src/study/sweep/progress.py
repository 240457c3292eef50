"""A study's progress: counted from its storage (every host's trials), shown as one line."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import optuna

from study.errors import redraws
from study.sweep.backends import FINISHED, best_trial
from study.sweep.budget import Budget
from study.sweep.spec import Event, Finished, Lost


@dataclass
class Tally:
    """The study's progress as the parent last saw it (all hosts, resumed sessions included)."""

    n_trials: int
    finished: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    best_value: float | None = None
    best_number: int | None = None


class ProgressLine:
    """One line for the whole study: finished/total, pruned, failed, best so far, time (and
    the time budget's rest, with sweep.timeout)."""

    def __init__(
        self,
        study_name: str,
        n_trials: int,
        read: Callable[[], Tally],
        budget: Budget | None = None,
    ) -> None:
        self.study_name = study_name
        self.budget = budget or Budget()
        self.n_trials = n_trials
        self.read = read
        self.start = time.monotonic()
        self.shown: Tally | None = None
        self.already = read().finished
        self.tty = redraws(sys.stdout)

    def render(self, tally: Tally) -> str:
        elapsed = time.monotonic() - self.start
        done_here = tally.finished - self.already
        left = self.n_trials - tally.finished
        eta = f"{_clock(elapsed / done_here * left)}" if done_here else "?"
        best = (
            f"{tally.best_value:.4g} (trial {tally.best_number})"
            if tally.best_value is not None
            else "-"
        )
        return (
            f"[{self.study_name}] {tally.finished}/{self.n_trials} finished, "
            f"{tally.pruned} pruned, {tally.failed} failed, {tally.running} running | "
            f"best {best} | "
            f"{_clock(elapsed)} elapsed, ETA {eta}{self._budget_left()}"
        )

    def _budget_left(self) -> str:
        left = self.budget.left_s()
        if left is None:
            return ""
        return f", {_clock(left)} of budget left" if left else ", budget spent: finishing"

    def on_event(self, event: Event) -> None:
        if isinstance(event, Lost):
            self._print(
                f"trial {event.number} lost its worker (exit {event.code}): "
                "failed; a new worker takes over"
            )
        if isinstance(event, Finished | Lost):
            tally = self.read()
            # Trials of a pack often end in the same epoch: one line per change of the trials
            # that ended. The running count alone changes with every claim: no line for it.
            ended = replace(tally, running=0)
            if ended != self.shown:
                self.shown = ended
                self._print(self.render(tally), overwrite=True)

    def _print(self, line: str, overwrite: bool = False) -> None:
        if self.tty and overwrite:
            print(f"\r{line}\033[K", end="", flush=True)
        elif self.tty:
            print(f"\r{line}\033[K", flush=True)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.tty:
            print()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return (
        f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"
        if minutes >= 60
        else f"{minutes}:{secs:02d}"
    )


def read_tally(study: optuna.Study, n_trials: int) -> Tally:
    """The study's progress from its storage: every host's trials count."""
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    tally = Tally(
        n_trials=n_trials,
        finished=sum(state in FINISHED for state in states),
        pruned=states.count(optuna.trial.TrialState.PRUNED),
        failed=states.count(optuna.trial.TrialState.FAIL),
        running=states.count(optuna.trial.TrialState.RUNNING),
    )
    best = best_trial(study)
    if best is not None:
        tally.best_value, tally.best_number = best.value, best.number
    return tally

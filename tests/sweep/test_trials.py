"""study.sweep.trials: a trial's run name; a worker whose parent is gone exits quietly."""

from __future__ import annotations

import math
import os

import optuna
import pytest

from study.epochs import DIVERGED, EARLY_STOPPED, PRUNED
from study.sweep.claims import run_name
from study.sweep.spec import Ready
from study.sweep.trials import TrialReport, TrialRunner


@pytest.mark.parametrize(
    ("number", "n_trials", "name"),
    [
        (7, 999, "trial 007"),
        (0, 10, "trial 0"),
        (9, 10, "trial 9"),
        (10, 11, "trial 10"),
        (3, 100, "trial 03"),
        (0, 1, "trial 0"),
    ],
)
def test_run_names_are_padded_to_the_digits_of_the_last_trial(
    number: int, n_trials: int, name: str
) -> None:
    assert run_name(number, n_trials) == name


def test_padded_names_sort_as_their_numbers_do() -> None:
    names = [run_name(number, 120) for number in range(120)]
    assert sorted(names) == names


def test_a_worker_whose_parent_is_gone_exits_with_one_line_not_a_traceback() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # the parent died: nobody reads the events any more
    runner = TrialRunner.__new__(TrialRunner)  # emit needs no spec, store or study
    runner.index, runner.events_fd = 3, write_fd
    try:
        with pytest.raises(SystemExit) as caught:  # Python exits on it without a traceback
            runner.emit(Ready())
    finally:
        os.close(write_fd)
    assert str(caught.value) == "worker 3: the sweep's parent is gone: exiting"
    assert not isinstance(caught.value, Exception)  # a trial's `except Exception` lets it pass


class _Trial:
    """The calls TrialReport makes on an Optuna trial, recorded; the pruner says prune at
    `prune_at`."""

    def __init__(self, prune_at: int | None = None) -> None:
        self.reports: list[tuple[float, int]] = []
        self.prune_at = prune_at

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return self.reports[-1][1] == self.prune_at


def _row(epoch: int, val: float) -> dict[str, float]:
    return {"epoch": float(epoch), "train/loss": 0.5, "val/loss": val, "val/acc": 1 - val}


def test_a_trial_reports_its_best_value_so_far_each_epoch() -> None:
    trial = _Trial()
    report = TrialReport(trial, "val/loss", maximize=False, prune=True)  # type: ignore[arg-type]
    assert [report(_row(e, v)) for e, v in enumerate([0.5, 0.3, 0.4], 1)] == [None] * 3
    assert trial.reports == [(0.5, 1), (0.3, 2), (0.3, 3)]
    assert report.end(None) == (optuna.trial.TrialState.COMPLETE, 0.3)
    assert report.outcome(None) == {"trial_state": "COMPLETE"}


def test_a_maximized_metric_reports_its_highest_value() -> None:
    trial = _Trial()
    report = TrialReport(trial, "val/acc", maximize=True, prune=True)  # type: ignore[arg-type]
    for epoch, val in enumerate([0.5, 0.3, 0.4], 1):
        report(_row(epoch, val))
    assert [value for value, _ in trial.reports] == pytest.approx([0.5, 0.7, 0.7])


def test_the_pruner_stops_a_trial_and_only_a_trial_with_a_pruner_asks_it() -> None:
    pruning = TrialReport(_Trial(prune_at=2), "val/loss", False, prune=True)  # type: ignore[arg-type]
    assert [pruning(_row(e, 0.5)) for e in (1, 2)] == [None, PRUNED]
    assert pruning.end(PRUNED) == (optuna.trial.TrialState.PRUNED, None)
    assert pruning.outcome(PRUNED) == {"trial_state": "PRUNED", "reason": PRUNED}
    without = TrialReport(_Trial(prune_at=2), "val/loss", False, prune=False)  # type: ignore[arg-type]
    assert [without(_row(e, 0.5)) for e in (1, 2)] == [None, None]


def test_a_metric_not_finite_is_diverged_and_a_metric_never_logged_fails_the_trial() -> None:
    report = TrialReport(_Trial(), "val/loss", False, prune=True)  # type: ignore[arg-type]
    assert report(_row(1, math.nan)) == DIVERGED
    assert report.outcome(DIVERGED) == {"trial_state": "PRUNED", "reason": DIVERGED}
    never = TrialReport(_Trial(), "val/nope", False, prune=True)  # type: ignore[arg-type]
    assert never.outcome(EARLY_STOPPED)["trial_state"] == "FAIL"
    with pytest.raises(RuntimeError, match="metric 'val/nope' was never logged"):
        never.end(EARLY_STOPPED)

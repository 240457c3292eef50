"""study.markers: the series that mark the early-stopping point on MLflow's metric chart."""

from __future__ import annotations

import math

from study.markers import BEST_EPOCH, MARKERS, RUNNING_BEST, STOPPED, marker_series

HISTORY = [
    {"epoch": 1.0, "train/loss": 0.9, "val/loss": 0.8},
    {"epoch": 2.0, "train/loss": 0.6, "val/loss": 0.5},
    {"epoch": 3.0, "train/loss": 0.4, "val/loss": 0.55},
    {"epoch": 4.0, "train/loss": 0.3, "val/loss": 0.7},
]


def series(name: str, history=HISTORY) -> list[tuple[int, float, int]]:  # type: ignore[no-untyped-def]
    return [(m.step, m.value, m.timestamp) for m in marker_series(history, 1000) if m.key == name]


def test_the_best_epoch_is_a_vertical_line_from_0_up_above_the_curves() -> None:
    assert series(BEST_EPOCH) == [(2, 0.0, 1000), (2, 0.99, 1001)]  # 1.1 x the highest, 0.9


def test_the_last_epoch_trained_is_a_vertical_line_too() -> None:
    assert series(STOPPED) == [(4, 0.0, 1000), (4, 0.99, 1001)]


def test_the_best_value_is_a_flat_line_from_the_best_epoch_to_the_stop() -> None:
    assert [(step, value) for step, value, _ in series(RUNNING_BEST)] == [(2, 0.5), (4, 0.5)]


def test_only_the_marker_series_are_made() -> None:
    assert {m.key for m in marker_series(HISTORY)} == set(MARKERS)


def test_a_run_without_a_finite_val_loss_has_no_markers() -> None:
    assert marker_series([{"epoch": 1.0, "train/loss": math.nan, "val/loss": math.nan}]) == []
    assert marker_series([]) == []


def test_a_diverged_epoch_does_not_stop_the_markers() -> None:
    history = [*HISTORY, {"epoch": 5.0, "train/loss": math.inf, "val/loss": math.nan}]
    assert [step for step, _, _ in series(STOPPED, history)] == [5, 5]
    assert [step for step, _, _ in series(RUNNING_BEST, history)] == [2, 5]

"""Series that mark a run's early-stopping point on MLflow's own metric chart.

MLflow's chart draws each metric of a run as a line through its (step, value) points, in the
run's colour. Two points at one step (0, then a value above the curves, in that order of time)
draw a vertical line there: the best epoch and the epoch training stopped get one each. The best
val/loss, at the best epoch and at the last, draws a flat line from the best epoch on (the
running minimum, without the points before the best that only repeat the val/loss curve). A
marker's "latest value" means nothing in the runs table, so these series are left out of its
columns (study.ui.view.OUTCOME_COLUMNS).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

from mlflow.entities import Metric

from study.diagnosis import CURVES, best_row
from study.tracking import clean_number

BEST_EPOCH = "marker/best_epoch"  # a vertical line at the epoch of minimum val/loss
STOPPED = "marker/stopped"  # a vertical line at the last epoch trained
RUNNING_BEST = "marker/best_val_loss"  # the best val/loss, flat from the best epoch to the stop
MARKERS = (BEST_EPOCH, STOPPED, RUNNING_BEST)
CHART = (*CURVES, *MARKERS)  # what a run's description charts: its curves and their markers
_ABOVE = 1.1  # a vertical line's top, as a multiple of the highest point of the curves


def marker_series(
    history: Sequence[Mapping[str, float]], now_ms: int | None = None
) -> list[Metric]:
    """The marker series of a run's per-epoch `history` (rows with epoch, train/loss and
    val/loss), step = epoch; none for a run without a finite val/loss."""
    best = best_row(history)
    finite = [
        row[key] for row in history for key in CURVES if math.isfinite(row.get(key, math.nan))
    ]
    if not best or not finite:
        return []
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    top = clean_number(max(max(finite), 0.0) * _ABOVE or 1.0)
    stopped = int(history[-1]["epoch"])
    metrics = [
        *_vertical(BEST_EPOCH, int(best["epoch"]), top, now_ms),
        *_vertical(STOPPED, stopped, top, now_ms),
    ]
    # Two points draw the flat line: the epochs before the best are the val/loss curve itself,
    # and each point is a row in the run's final write (~0.1 ms each into sqlite here).
    best_value = clean_number(best["val/loss"])
    metrics += [
        Metric(RUNNING_BEST, best_value, now_ms, step)
        for step in sorted({int(best["epoch"]), stopped})
    ]
    return metrics


def _vertical(name: str, step: int, top: float, now_ms: int) -> list[Metric]:
    # The later timestamp is drawn second: a line from 0 up to `top` at `step`.
    return [Metric(name, 0.0, now_ms, step), Metric(name, top, now_ms + 1, step)]

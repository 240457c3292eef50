"""Series that mark a run's early-stopping point on MLflow's own metric chart.

MLflow's chart draws each metric of a run as a line through its (step, value) points, in the
run's colour. Two points at one step (0, then a value above the curves, in that order of time)
draw a vertical line there: the best epoch and the epoch training stopped get one each. A running
minimum of val/loss goes flat from the best epoch on. A marker's "latest value" means nothing in
the runs table, so these series are left out of its columns (study.runs_table.OUTCOME_COLUMNS).
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
RUNNING_BEST = "marker/best_val_loss"  # val/loss's running minimum: flat from the best epoch
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
    lowest = math.inf
    for row in history:
        value = row.get("val/loss", math.nan)
        if math.isfinite(value):
            lowest = min(lowest, value)
        if math.isfinite(lowest):
            metrics.append(Metric(RUNNING_BEST, clean_number(lowest), now_ms, int(row["epoch"])))
    return metrics


def _vertical(name: str, step: int, top: float, now_ms: int) -> list[Metric]:
    # The later timestamp is drawn second: a line from 0 up to `top` at `step`.
    return [Metric(name, 0.0, now_ms, step), Metric(name, top, now_ms + 1, step)]

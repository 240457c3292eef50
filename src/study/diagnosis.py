"""Read a run's learning curves: where to stop early, and whether the model under- or overfits.

Loss levels are measured in one unit, the *baseline loss*: the training loss of the best
constant predictor (the class frequencies for a classifier, ln 2 ~ 0.69 for two balanced
classes; the mean for a regressor, 1.0 on the standardized target), so one set of thresholds
means the same on any dataset. Curves are lists of per-epoch losses, epoch 1 first.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from study.errors import UserError

UNDERFIT = "underfit"
GOOD = "good"
OVERFIT = "overfit"
DIVERGED = "diverged"
# Underfit when val/loss falls over the last `window` epochs at least this share of its mean rate
# over the run: a curve that has not begun to bend (one that converges flattens far more).
_NO_BEND = 0.5
CURVES = ("train/loss", "val/loss")  # the learning curves every verdict reads
PRUNED = "pruned"  # a trial its pruner stopped: the verdict of the pruner, not of the curve
STUDY = "study"  # a study's parent run: its trials have verdicts, it has none of its own
VERDICTS = (GOOD, UNDERFIT, OVERFIT, DIVERGED, PRUNED)  # a trial's, in the order counts show


def best_row(history: Sequence[Mapping[str, float]]) -> Mapping[str, float]:
    """The epoch of minimum (finite) validation loss, or {} when there is none."""
    finite = [row for row in history if math.isfinite(row.get("val/loss", math.nan))]
    return min(finite, key=lambda row: row["val/loss"]) if finite else {}


@dataclass(frozen=True)
class Thresholds:
    """When curves count as underfit, overfit or diverged (conf/train.yaml `diagnosis:`)."""

    underfit_level: float = 0.8
    """underfit if train/loss never drops below this fraction of the baseline loss"""
    still_falling: float = 0.01
    """underfit if val/loss still falls this much (x baseline) per epoch at the end..."""
    window: int = 10
    """...over this many last epochs (a least-squares slope), train/loss falling too"""
    overfit_rise: float = 0.25
    """overfit if val/loss ends this fraction above its minimum while train/loss fell"""
    diverge_level: float = 3.0
    """diverged if train/loss ever exceeds this multiple of the baseline (or is not finite)"""
    smoothing: int = 5
    """the under- and overfit rules read a centered moving median over this many epochs (odd;
    1: the raw curves), so one noisy epoch decides nothing"""

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value <= 0:
                raise UserError(f"diagnosis.{key}={value!r} is out of range: must be > 0")
        for key in ("window", "smoothing"):
            if not isinstance(getattr(self, key), int):
                value = getattr(self, key)
                raise UserError(f"diagnosis.{key}={value!r} is not a whole number: use >= 1")
        if self.diverge_level <= 1:
            message = "must be > 1 (a multiple of the baseline loss)"
            raise UserError(f"diagnosis.diverge_level={self.diverge_level!r} {message}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> Thresholds:
        """Thresholds from the `diagnosis:` config section; the defaults where it is absent."""
        if section is None:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(map(str, section)) - known)
        if unknown:
            raise UserError(f"diagnosis.{unknown[0]} is not a setting: use {', '.join(known)}")
        return cls(**{str(key): value for key, value in section.items()})


@dataclass(frozen=True)
class Diagnosis:
    """The verdict on one run's curves, the early-stopping point and the generalization gap."""

    verdict: str
    reason: str  # one line: which rule fired, with the numbers
    best_epoch: int  # epoch of minimum validation loss: where early stopping should stop
    best_val_loss: float
    gap_at_best: float  # val/loss - train/loss at the best epoch
    gap_final: float  # val/loss - train/loss at the last epoch
    val_rise: float  # last smoothed val/loss over its minimum, minus 1 (0.3: ended 30% above)
    unit: float  # the baseline loss, or the first epoch's train/loss when that is unknown

    def metrics(self) -> dict[str, float]:
        return {
            "gap_at_best": self.gap_at_best,
            "gap_final": self.gap_final,
            "val_rise": self.val_rise,
        }


def pruned(diagnosis: Diagnosis, stopped_epoch: int) -> Diagnosis:
    """A pruned trial's verdict: its curve was cut short, so under- or overfit cannot be told."""
    reason = (
        f"the pruner stopped it at epoch {stopped_epoch}: "
        f"its best val/loss by then, {diagnosis.best_val_loss:.4g}, did not look promising "
        "next to the other trials at that epoch"
    )
    return replace(diagnosis, verdict=PRUNED, reason=reason)


def diagnose(
    train: Sequence[float],
    val: Sequence[float],
    thresholds: Thresholds | None = None,
    baseline: float | None = None,
) -> Diagnosis:
    """Diagnose one run from its per-epoch train and validation losses.

    Rules, first match wins: diverged (a loss not finite, or train/loss above `diverge_level`
    baselines at any epoch); overfit (smoothed val/loss ends `overfit_rise` above its minimum
    while smoothed train/loss fell below its value there); underfit (smoothed train/loss never
    below `underfit_level` baselines, or val/loss still falling `still_falling` baselines per
    epoch over the last `window` epochs, with train/loss falling and smoothed val/loss lowest
    in the window's second half); else good (its reason says "still falling" when val/loss is
    lowest at the last epoch, else where it bottomed out). Smoothed: a centered moving median
    over `smoothing` epochs, so a single noisy epoch moves no verdict. The early-stopping
    point (best_epoch) is the raw minimum: where the checkpoint was taken. Without a baseline,
    the first epoch's train/loss is the unit and the level rule is skipped.
    """
    if not train or len(train) != len(val):
        raise ValueError(f"need equally long, non-empty curves, got {len(train)} and {len(val)}")
    t = thresholds or Thresholds()
    known = baseline is not None and math.isfinite(baseline) and baseline > 0
    unit = float(baseline or 0.0) if known else _first_finite(train)
    finite_val = [i for i, v in enumerate(val) if math.isfinite(v)]
    best = min(finite_val, key=lambda i: val[i]) if finite_val else len(val) - 1
    last = len(train) - 1
    not_finite = [i for i in range(last + 1) if not math.isfinite(train[i] + val[i])]
    # A diverged run's numbers stay raw: a median of values that are not finite means nothing.
    s_train, s_val = (
        (list(train), list(val))
        if not_finite
        else (smooth(train, t.smoothing), smooth(val, t.smoothing))
    )
    s_best = best if not_finite else min(range(last + 1), key=s_val.__getitem__)
    rise = (s_val[last] - s_val[s_best]) / max(s_val[s_best], 1e-12)

    def result(verdict: str, reason: str) -> Diagnosis:
        return Diagnosis(
            verdict=verdict,
            reason=reason,
            best_epoch=best + 1 if finite_val else 0,
            best_val_loss=val[best] if finite_val else math.nan,
            gap_at_best=val[best] - train[best],
            gap_final=val[last] - train[last],
            val_rise=rise,
            unit=unit,
        )

    if not_finite:
        return result(DIVERGED, f"the loss is not finite from epoch {not_finite[0] + 1}")
    peak = max(range(last + 1), key=lambda i: train[i])
    if train[peak] > t.diverge_level * unit:
        return result(
            DIVERGED,
            f"train/loss blew up to {train[peak]:.3g} at epoch {peak + 1}, "
            f"{train[peak] / unit:.1f}x the {_unit(known)}",
        )
    smoothed = f" (median of {t.smoothing} epochs)" if t.smoothing > 1 else ""
    # Train/loss kept falling beyond its own epoch-to-epoch scatter: with small batches and a
    # high learning rate both curves wobble while the model learns nothing more, not overfits.
    train_fall = s_train[s_best] - s_train[last]
    if rise >= t.overfit_rise and train_fall > 2 * _noise(train, s_train, s_best):
        return result(
            OVERFIT,
            f"val/loss{smoothed} ended {rise:.0%} above its minimum at epoch {s_best + 1} "
            "while train/loss kept falling",
        )
    lowest = min(s_train) / unit
    if known and lowest >= t.underfit_level:
        return result(
            UNDERFIT,
            f"train/loss{smoothed} never went below {lowest:.0%} of a constant predictor's loss",
        )
    start = max(0, last + 1 - t.window)
    val_fall = -_slope(val[start:]) / unit
    train_falls = -_slope(train[start:]) / unit
    # Still falling means heading down at the very end: the minimum lies in the window's
    # second half, so a dip followed by a climb inside the window does not count.
    recent_best = s_best >= last - (last - start) // 2
    if val_fall >= t.still_falling and train_falls > 0 and recent_best:
        return result(
            UNDERFIT,
            f"val/loss still fell {val_fall:.1%} of the {_unit(known)} per epoch over the "
            f"last {last + 1 - start} epochs: train longer",
        )
    # No bend: as steep at the end as on average over a long run (a learning rate too small).
    mean_fall = (val[0] - s_val[last]) / max(last, 1) / unit  # from the raw first epoch
    long_run = last + 1 >= 3 * t.window
    if long_run and recent_best and train_falls > 0 and val_fall >= _NO_BEND * mean_fall > 0:
        return result(
            UNDERFIT,
            f"val/loss still fell as steeply over the last {last + 1 - start} epochs as "
            f"on average ({val_fall / mean_fall:.0%} of its mean rate): train longer or faster",
        )
    if best == last:  # no minimum seen yet: more epochs may still lower val/loss
        return result(
            GOOD,
            f"val/loss was still falling at epoch {last + 1}, the last: try more epochs",
        )
    noisy = (
        ", but train/loss did not keep falling (noisy, not overfitting)"
        if rise >= t.overfit_rise
        else ""
    )
    return result(
        GOOD,
        f"val/loss bottomed out at epoch {best + 1} and ended {rise:.0%} above its "
        f"minimum{smoothed}{noisy}",
    )


def smooth(values: Sequence[float], width: int) -> list[float]:
    """A centered moving median over `width` epochs (fewer at the ends): a lone spike or dip
    vanishes, a trend stays where it is (a moving mean would smear the spike, an EMA lag)."""
    half = max(0, (width - 1) // 2)
    return [statistics.median(values[max(0, i - half) : i + half + 1]) for i in range(len(values))]


def verdict_counts(verdicts: Iterable[str]) -> dict[str, int]:
    """How many trials got each verdict, every verdict listed (0 where none)."""
    counts = dict.fromkeys(VERDICTS, 0)
    for verdict in verdicts:
        counts[verdict] = counts.get(verdict, 0) + 1
    return counts


def counts_line(counts: Mapping[str, int]) -> str:
    """ "12 good, 3 underfit, 2 overfit, 0 diverged, 3 pruned": every verdict, in one order."""
    return ", ".join(f"{number} {verdict}" for verdict, number in counts.items())


def diagnose_history(
    history: Sequence[Mapping[str, float]],
    thresholds: Thresholds | None = None,
    baseline: float | None = None,
) -> Diagnosis:
    """`diagnose` on rows like {"epoch": 1, "train/loss": ..., "val/loss": ...}."""
    return diagnose(
        [row["train/loss"] for row in history],
        [row["val/loss"] for row in history],
        thresholds,
        baseline,
    )


def _noise(values: Sequence[float], smoothed: Sequence[float], start: int) -> float:
    """The epoch-to-epoch scatter of `values` around their smoothed curve from `start` on: the
    median absolute deviation, scaled to a standard deviation."""
    deviations = [abs(v - s) for v, s in zip(values[start:], smoothed[start:], strict=True)]
    return 1.4826 * statistics.median(deviations) if deviations else 0.0


def _first_finite(values: Sequence[float]) -> float:
    return next((abs(v) for v in values if math.isfinite(v) and v != 0), 1.0)


def _slope(values: Sequence[float]) -> float:
    """Least-squares slope per epoch (0 for fewer than two points): robust to a noisy epoch."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values))
    return covariance / sum((x - mean_x) ** 2 for x in range(n))


def _unit(known: bool) -> str:
    return "baseline loss" if known else "first epoch's train/loss"

"""Read a run's learning curves: where to stop early, and whether the model under- or overfits.

Loss levels are measured in one unit, the *baseline loss*: the training loss of the best
constant predictor (the class frequencies for a classifier, ln 2 ~ 0.69 for two balanced
classes; the mean for a regressor, 1.0 on the standardized target), so one set of thresholds
means the same on any dataset. Curves are lists of per-epoch losses, epoch 1 first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from study.errors import UserError

UNDERFIT = "underfit"
GOOD = "good"
OVERFIT = "overfit"
DIVERGED = "diverged"
CURVES = ("train/loss", "val/loss")  # the learning curves every verdict reads
PRUNED = "pruned"  # a trial its pruner stopped: the verdict of the pruner, not of the curve


def best_row(history: Sequence[dict[str, float]]) -> dict[str, float]:
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

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value <= 0:
                raise UserError(f"diagnosis.{key}={value!r} is out of range: must be > 0")
        if not isinstance(self.window, int):
            raise UserError(f"diagnosis.window={self.window!r} is not a whole number: use >= 1")
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
    val_rise: float  # last val/loss over its minimum, minus 1 (0.3: ended 30% above)
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
    baselines at any epoch); overfit (val/loss ends `overfit_rise` above its minimum while
    train/loss fell below its value there); underfit (train/loss never below `underfit_level`
    baselines, or val/loss still falling `still_falling` baselines per epoch over the last
    `window` epochs, with train/loss falling and val/loss lowest in the window's second half);
    else good (its reason says "still falling" when val/loss is lowest at the last epoch, else
    where it bottomed out). Without a baseline, the first epoch's train/loss is the unit and the
    level rule is skipped.
    """
    if not train or len(train) != len(val):
        raise ValueError(f"need equally long, non-empty curves, got {len(train)} and {len(val)}")
    t = thresholds or Thresholds()
    known = baseline is not None and math.isfinite(baseline) and baseline > 0
    unit = float(baseline or 0.0) if known else _first_finite(train)
    finite_val = [i for i, v in enumerate(val) if math.isfinite(v)]
    best = min(finite_val, key=lambda i: val[i]) if finite_val else len(val) - 1
    last = len(train) - 1
    rise = (val[last] - val[best]) / max(val[best], 1e-12)

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

    not_finite = [i for i in range(last + 1) if not math.isfinite(train[i] + val[i])]
    if not_finite:
        return result(DIVERGED, f"the loss is not finite from epoch {not_finite[0] + 1}")
    peak = max(range(last + 1), key=lambda i: train[i])
    if train[peak] > t.diverge_level * unit:
        return result(
            DIVERGED,
            f"train/loss blew up to {train[peak]:.3g} at epoch {peak + 1}, "
            f"{train[peak] / unit:.1f}x the {_unit(known)}",
        )
    if rise >= t.overfit_rise and train[last] < train[best]:
        return result(
            OVERFIT,
            f"val/loss ended {rise:.0%} above its minimum at epoch {best + 1} "
            "while train/loss kept falling",
        )
    lowest = min(train) / unit
    if known and lowest >= t.underfit_level:
        return result(
            UNDERFIT,
            f"train/loss never went below {lowest:.0%} of a constant predictor's loss",
        )
    start = max(0, last + 1 - t.window)
    val_fall = -_slope(val[start:]) / unit
    train_fall = -_slope(train[start:]) / unit
    # Still falling means heading down at the very end: the minimum lies in the window's
    # second half, so a dip followed by a climb inside the window does not count.
    recent_best = best >= last - (last - start) // 2
    if val_fall >= t.still_falling and train_fall > 0 and recent_best:
        return result(
            UNDERFIT,
            f"val/loss still fell {val_fall:.1%} of the {_unit(known)} per epoch over the "
            f"last {last + 1 - start} epochs: train longer",
        )
    if best == last:  # no minimum seen yet: more epochs may still lower val/loss
        return result(
            GOOD,
            f"val/loss was still falling at epoch {last + 1}, the last: try more epochs",
        )
    noisy = ", but train/loss rose too (noisy, not overfitting)" if rise >= t.overfit_rise else ""
    return result(
        GOOD, f"val/loss bottomed out at epoch {best + 1} and ended {rise:.0%} above it{noisy}"
    )


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

"""The rules every engine applies after each epoch, defined once, and what a run's epochs came to.

After each epoch a run (a single Lightning run, or a member of a pack) hands its row of metrics
to its `EpochJudge`, which keeps the best epoch (minimum validation loss: where early stopping
should stop) and says whether training stops: diverged (a loss not finite, or train/loss above
`diverge_level` x the baseline loss), a caller's report (a trial's pruner), early stopping (no
improvement by more than `min_delta` for `patience` epochs), or the last epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.diagnosis import Diagnosis, Thresholds, best_row, diagnose_history

# Why a run stopped.
DIVERGED = "diverged"
PRUNED = "pruned"
EARLY_STOPPED = "early_stopped"
MAX_EPOCHS = "max_epochs"
FAILED = "failed"  # its report raised: the run fails, a pack's other members go on

# Told each epoch's row; returns a stop reason (e.g. PRUNED) or None to go on.
EpochReport = Callable[[Mapping[str, float]], "str | None"]


@dataclass(frozen=True)
class EpochRules:
    """When a run stops. The defaults are conf/trainer/default.yaml's and the diagnosis's."""

    max_epochs: int = 50
    patience: int | None = 10  # None: no early stopping
    min_delta: float = 0.0
    diverge_level: float = Thresholds.diverge_level

    @classmethod
    def from_config(cls, cfg: Any) -> EpochRules:
        """The rules a run's config sets (`trainer:` and `diagnosis.diverge_level`)."""
        early_stopping = cfg.trainer.early_stopping
        return cls(
            max_epochs=int(cfg.trainer.max_epochs),
            patience=int(early_stopping.patience) if early_stopping.enabled else None,
            min_delta=float(early_stopping.min_delta),
            diverge_level=Thresholds.from_config(cfg.get("diagnosis")).diverge_level,
        )


class EpochJudge:
    """One run under the rules: its best epoch so far and, once it must stop, why."""

    def __init__(
        self, rules: EpochRules, baseline_loss: float, report: EpochReport | None = None
    ) -> None:
        self.rules = rules
        self.divergence_limit = rules.diverge_level * baseline_loss
        self.report = report
        self.best_epoch = 0
        self.best_val_loss = math.inf
        self.stop_reason: str | None = None
        self._stall_best = math.inf  # early stopping's reference
        self._stalled_epochs = 0

    def end_epoch(self, row: Mapping[str, float]) -> bool:
        """Judge the epoch `row` ({"epoch": n, "train/loss": ..., "val/loss": ..., ...}): True
        when it is the best so far (keep its weights); `stop_reason` is set when training
        must stop. What `report` raises propagates, with `stop_reason` FAILED."""
        val_loss = row["val/loss"]
        improved = val_loss < self.best_val_loss  # False for NaN: a diverged epoch is never best
        if improved:
            self.best_val_loss, self.best_epoch = val_loss, int(row["epoch"])
        try:
            self.stop_reason = self._stop_reason(row)
        except Exception:
            self.stop_reason = FAILED
            raise
        return improved

    def _stop_reason(self, row: Mapping[str, float]) -> str | None:
        train_loss, val_loss = row["train/loss"], row["val/loss"]
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            return DIVERGED
        if math.isfinite(self.divergence_limit) and train_loss > self.divergence_limit:
            return DIVERGED
        if self.report is not None:
            reason = self.report(row)
            if reason is not None:
                return reason
        if self._stalled(val_loss):
            return EARLY_STOPPED
        return MAX_EPOCHS if row["epoch"] >= self.rules.max_epochs else None

    def _stalled(self, val_loss: float) -> bool:
        """No improvement by more than min_delta for `patience` epochs (as Lightning's
        EarlyStopping(mode="min") counts)."""
        if self.rules.patience is None:
            return False
        if val_loss < self._stall_best - self.rules.min_delta:
            self._stall_best, self._stalled_epochs = val_loss, 0
            return False
        self._stalled_epochs += 1
        return self._stalled_epochs >= self.rules.patience


@dataclass
class FitResult:
    """What one training run produced, by either engine: the curves, the early-stopping point,
    why training stopped, the test score and the verdict."""

    history: list[dict[str, float]]
    test_metrics: dict[str, float]
    checkpoint: Path | None
    device: str
    data_fingerprint: str
    stop_reason: str | None  # DIVERGED, PRUNED, EARLY_STOPPED, MAX_EPOCHS...
    baseline_loss: float  # training loss of the best constant predictor
    diagnosis: Diagnosis  # underfit / good / overfit / diverged, from the curves
    fit_seconds: float = 0.0  # wall time of the training itself

    @classmethod
    def judged(cls, cfg: Any, history: list[dict[str, float]], **fields: Any) -> FitResult:
        """A run's result with its curves judged by the config's `diagnosis:` thresholds."""
        thresholds = Thresholds.from_config(cfg.get("diagnosis"))
        diagnosis = diagnose_history(history, thresholds, fields["baseline_loss"])
        return cls(history=history, diagnosis=diagnosis, **fields)

    @property
    def stopped_early(self) -> bool:
        return self.stop_reason not in (None, MAX_EPOCHS)

    @property
    def best(self) -> Mapping[str, float]:
        """The epoch of minimum validation loss: where early stopping should stop."""
        return best_row(self.history)

    @property
    def best_epoch(self) -> int:
        return int(self.best.get("epoch", 0))

    @property
    def best_val_loss(self) -> float:
        return self.best.get("val/loss", math.nan)

    @property
    def stopped_epoch(self) -> int:
        return int(self.history[-1]["epoch"]) if self.history else 0

    def summary(self) -> dict[str, float]:
        return {
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "stopped_epoch": self.stopped_epoch,
            **self.test_metrics,
            "baseline_loss": self.baseline_loss,
            **self.diagnosis.metrics(),
        }

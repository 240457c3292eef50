"""What one training run produced, by either engine (study.train's Lightning fit or a pack)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from study.diagnosis import Diagnosis, best_row


@dataclass
class FitResult:
    """What one training run produced: the curves, the early-stopping point, the test score."""

    history: list[dict[str, float]]
    test_metrics: dict[str, float]
    checkpoint: Path | None
    device: str
    data_fingerprint: str
    stopped_early: bool
    baseline_loss: float  # training loss of the best constant predictor
    diagnosis: Diagnosis  # underfit / good / overfit / diverged, from the curves
    fit_seconds: float = 0.0  # wall time of the training itself

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

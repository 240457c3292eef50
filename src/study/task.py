"""What a model learns, defined once for both engines: each task's loss and metrics, and which
task each of our models does.

Every function takes a leading member dimension K: a pack of K trials (study.packed) passes
its stacked outputs, a single model (study.models) passes K = 1. The same code computes a
trial's loss whichever engine trains it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch

CLASSIFICATION = "classification"
REGRESSION = "regression"

# Our models by config target, with their task: known without importing them (they are
# Lightning modules, seconds to import).
MODELS = {"study.models.Classifier": CLASSIFICATION, "study.models.Regressor": REGRESSION}


class Task:
    """A task's training loss per row and its metrics over a whole split, per member."""

    name: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]]  # what `metrics` returns, `loss` first

    def loss(
        self, outputs: torch.Tensor, target: torch.Tensor, reduction: str = "none"
    ) -> torch.Tensor:
        """[..., rows, out] outputs and [..., rows] targets -> [..., rows] losses, or their mean
        (`reduction="mean"`: one fused kernel, what a single model's step takes)."""
        raise NotImplementedError

    def metrics(
        self, outputs: torch.Tensor, target: torch.Tensor, target_scale: float = 1.0
    ) -> dict[str, torch.Tensor]:
        """[K, n, out] outputs of a whole split and its [n] targets -> name: [K] values."""
        raise NotImplementedError

    @property
    def epoch_metrics(self) -> tuple[str, ...]:
        """The metrics a run logs every epoch, by name."""
        return ("train/loss", *(f"val/{name}" for name in self.metric_names))


class Classification(Task):
    """Logits + cross-entropy; one logit with binary cross-entropy for two classes."""

    name = CLASSIFICATION
    metric_names = ("loss", "acc")

    def loss(
        self, outputs: torch.Tensor, target: torch.Tensor, reduction: str = "none"
    ) -> torch.Tensor:
        from torch.nn import functional as F  # here: config checks import this module, not torch

        if outputs.shape[-1] == 1:
            return F.binary_cross_entropy_with_logits(
                outputs.squeeze(-1), target.float(), reduction=reduction
            )
        # Classes to dim 1, as cross_entropy takes them: [K, rows, C] -> [K, C, rows].
        return F.cross_entropy(outputs.movedim(-1, 1), target, reduction=reduction)

    def metrics(
        self, outputs: torch.Tensor, target: torch.Tensor, target_scale: float = 1.0
    ) -> dict[str, torch.Tensor]:
        target = target.expand(outputs.shape[0], -1)
        if outputs.shape[2] == 1:
            predicted = (outputs.squeeze(2) > 0).long()
        else:
            predicted = outputs.argmax(dim=2)
        accuracy = (predicted == target).float().mean(dim=1)
        return {"loss": self.loss(outputs, target).mean(dim=1), "acc": accuracy}


class Regression(Task):
    """Mean squared error on the standardized target; RMSE and MAE in the target's units."""

    name = REGRESSION
    metric_names = ("loss", "rmse", "mae", "r2")

    def loss(
        self, outputs: torch.Tensor, target: torch.Tensor, reduction: str = "none"
    ) -> torch.Tensor:
        from torch.nn import functional as F

        return F.mse_loss(outputs.squeeze(-1), target, reduction=reduction)

    def metrics(
        self, outputs: torch.Tensor, target: torch.Tensor, target_scale: float = 1.0
    ) -> dict[str, torch.Tensor]:
        error = outputs.squeeze(2) - target
        mse = error.pow(2).mean(dim=1)
        variance = (target - target.mean()).pow(2).mean().clamp_min(1e-12)
        return {
            "loss": mse,
            "rmse": mse.sqrt() * target_scale,
            "mae": error.abs().mean(dim=1) * target_scale,
            "r2": 1 - mse / variance,
        }


TASKS: dict[str, Task] = {CLASSIFICATION: Classification(), REGRESSION: Regression()}


def model_task(target: str) -> Task:
    """The task of the model class `target` (a dotted path): ours by name, a user's own model
    by its `task` attribute."""
    name = MODELS.get(target)
    if name is None:
        from hydra.utils import get_class

        name = str(get_class(target).task)  # type: ignore[attr-defined]
    return TASKS[name]

"""Lightning modules: an MLP classifier (cross-entropy) and an MLP regressor (mean squared error).

Training uses manual optimization and keeps per-step work to the bare minimum (forward,
backward, step, one on-device accumulation): on tiny MLPs the framework's per-step machinery,
not the arithmetic, would otherwise dominate. Metrics are computed once per epoch, on the whole
validation split at once, and kept in `history` for callbacks to read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from study.data import CLASSIFICATION, REGRESSION
from study.nets import mlp

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class MLPTask(pl.LightningModule):
    """Shared training loop; subclasses define the loss and the metrics of their task."""

    task: ClassVar[str]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        optimizer: OptimizerFactory,
        hidden_sizes: Sequence[int] = (32, 32),
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = mlp(in_features, out_features, list(hidden_sizes), activation, dropout)
        self.optimizer_factory = optimizer
        self.history: list[dict[str, float]] = []
        self.test_metrics: dict[str, float] = {}
        self._train_loss_sum = torch.zeros(())
        self._train_count = 0
        self._eval_batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self, outputs: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Metrics of a whole split, `loss` first."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())

    def transfer_batch_to_device(self, batch: Any, device: torch.device, index: int) -> Any:
        return batch  # batches are sliced from tensors that already live on the device

    def on_train_epoch_start(self) -> None:
        self._train_loss_sum = torch.zeros((), device=self.device)
        self._train_count = 0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        optimizer = self.optimizers()
        optimizer.zero_grad()  # type: ignore[union-attr]
        loss = self.loss(self.net(x), y)
        self.manual_backward(loss)
        optimizer.step()  # type: ignore[union-attr]
        # Accumulate on the device: calling .item() here would sync with a GPU every step.
        self._train_loss_sum += loss.detach() * len(y)
        self._train_count += len(y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_batches.append((self.net(batch[0]), batch[1]))

    test_step = validation_step

    def on_validation_epoch_end(self) -> None:
        values = self._evaluate("val")
        if self._train_count:  # Lightning validates after the epoch's last training step
            values["train/loss"] = (self._train_loss_sum / self._train_count).item()
            self.history.append({"epoch": self.current_epoch + 1, **values})
        # The one self.log per epoch: EarlyStopping and ModelCheckpoint read callback_metrics.
        self.log("val/loss", values["val/loss"], prog_bar=True)

    def on_test_epoch_end(self) -> None:
        self.test_metrics = self._evaluate("test")

    def _evaluate(self, prefix: str) -> dict[str, float]:
        outputs = torch.cat([out for out, _ in self._eval_batches])
        target = torch.cat([y for _, y in self._eval_batches])
        self._eval_batches.clear()
        metrics = self.metrics(outputs, target)
        values = torch.stack(list(metrics.values())).tolist()  # one device sync for all
        return {f"{prefix}/{name}": value for name, value in zip(metrics, values, strict=True)}


class Classifier(MLPTask):
    """Logits + cross-entropy: one logit with binary cross-entropy for two classes."""

    task = CLASSIFICATION

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if outputs.shape[1] == 1:
            return F.binary_cross_entropy_with_logits(outputs.squeeze(1), target.float())
        return F.cross_entropy(outputs, target)

    def metrics(self, outputs: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        if outputs.shape[1] == 1:
            predicted = (outputs.squeeze(1) > 0).long()
        else:
            predicted = outputs.argmax(dim=1)
        accuracy = (predicted == target).float().mean()
        return {"loss": self.loss(outputs, target), "acc": accuracy}


class Regressor(MLPTask):
    """Mean squared error on the standardized target; RMSE and MAE in the target's own units."""

    task = REGRESSION

    def __init__(self, *args: Any, target_scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target_scale = target_scale

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs.squeeze(1), target)

    def metrics(self, outputs: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        error = outputs.squeeze(1) - target
        mse = error.pow(2).mean()
        variance = (target - target.mean()).pow(2).mean().clamp_min(1e-12)
        return {
            "loss": mse,
            "rmse": mse.sqrt() * self.target_scale,
            "mae": error.abs().mean() * self.target_scale,
            "r2": 1 - mse / variance,
        }

"""Lightning modules: an MLP classifier (cross-entropy) and an MLP regressor (mean squared error).

On tiny MLPs Lightning's per-batch machinery (a dozen hook dispatches, loop bookkeeping) costs
more than the arithmetic, and its validation loop costs ~3 ms of setup per epoch. So one
Lightning "batch" is one epoch: `training_step` runs every mini-batch of the epoch itself
(manual optimization: one optimizer step per mini-batch, as in plain gradient descent), then
evaluates the validation split in one forward pass. Epoch-level callbacks (early stopping,
pruning, metric logging) see `history` and `val/loss` at `on_train_epoch_end`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from study.data import CLASSIFICATION, REGRESSION, Batches, Split
from study.nets import mlp

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class EpochLoader:
    """What Lightning iterates: one item per epoch, the epoch's mini-batches plus the val split."""

    def __init__(self, batches: Batches, val: Split) -> None:
        self.batches = batches
        self.val = val

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Any:
        yield self


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
        self.baseline_loss = math.nan  # a constant predictor's training loss, set by fit()

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

    def training_step(self, epoch: EpochLoader, batch_idx: int) -> None:
        # The bare torch optimizer and backward: Lightning's wrappers serve precision plugins and
        # distributed strategies this single-device fp32 module does not use, and cost ~0.1 ms
        # a step (about 20% of a small MLP's step).
        optimizer = self.optimizers().optimizer  # type: ignore[union-attr]
        loss_sum = torch.zeros((), device=self.device)
        count = 0
        for x, y in epoch.batches:
            optimizer.zero_grad()
            loss = self.loss(self.net(x), y)
            loss.backward()
            optimizer.step()
            # Accumulate on the device: calling .item() here would sync with a GPU every step.
            loss_sum += loss.detach() * len(y)
            count += len(y)
        values = self.evaluate(epoch.val, "val")
        values["train/loss"] = (loss_sum / count).item()
        self.history.append({"epoch": self.current_epoch + 1, **values})
        val_loss = values["val/loss"] if math.isfinite(values["val/loss"]) else math.inf
        self.publish("val/loss", val_loss)

    def publish(self, name: str, value: float) -> None:
        """Hand an epoch's value to callbacks (EarlyStopping reads `callback_metrics`) and to the
        progress bar: what `self.log` ends up doing, without the ~1 ms per call its result
        collection spends on step/epoch reduction and device syncs (measured: ~15% of a small
        MLP's run); one value per epoch needs none of that."""
        self.trainer.callback_metrics[name] = torch.tensor(value)
        self.trainer.progress_bar_metrics[name] = value

    @torch.no_grad()
    def evaluate(self, split: Split, prefix: str) -> dict[str, float]:
        """Metrics of a whole split in one forward pass, with dropout off."""
        self.net.eval()
        metrics = self.metrics(self.net(split.x), split.y)
        self.net.train()
        values = torch.stack(list(metrics.values())).tolist()  # one device sync for all
        return {f"{prefix}/{name}": value for name, value in zip(metrics, values, strict=True)}


def epoch_history(module: pl.LightningModule) -> list[dict[str, float]]:
    """The per-epoch metrics of one of our modules, for callbacks typed on LightningModule."""
    history: list[dict[str, float]] = getattr(module, "history")  # noqa: B009
    return history


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

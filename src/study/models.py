"""Lightning modules: an MLP classifier (cross-entropy) and an MLP regressor (mean squared error).

Their loss and metrics are their task's (study.task), the same code a pack of trials runs.
On tiny MLPs Lightning's per-batch machinery (a dozen hook dispatches, loop bookkeeping) costs
more than the arithmetic, and its validation loop costs ~3 ms of setup per epoch. So one
Lightning "batch" is one epoch: `training_step` runs every mini-batch of the epoch itself
(manual optimization: one optimizer step per mini-batch, as in plain gradient descent), then
evaluates the validation split in one forward pass. Epoch-level callbacks (study.train) see
`history` at `on_train_epoch_end`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from torch import nn

from study.data import CLASSIFICATION, REGRESSION, Batches, Split
from study.nets import mlp
from study.task import TASKS

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


class MLPModel(pl.LightningModule):
    """The training loop; subclasses name their task (study.task), which defines the loss and
    the metrics."""

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
        self.target_scale = 1.0
        self.objective = TASKS[self.task]  # its loss and metrics

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The mean loss of a mini-batch: [rows, out] outputs, [rows] targets."""
        return self.objective.loss(outputs, target, "mean")

    def metrics(self, outputs: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Metrics of a whole split, `loss` first."""
        values = self.objective.metrics(outputs[None], target, self.target_scale)
        return {name: value[0] for name, value in values.items()}

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


class Classifier(MLPModel):
    """Logits + cross-entropy: one logit with binary cross-entropy for two classes."""

    task = CLASSIFICATION


class Regressor(MLPModel):
    """Mean squared error on the standardized target; RMSE and MAE in the target's own units."""

    task = REGRESSION

    def __init__(self, *args: Any, target_scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target_scale = target_scale

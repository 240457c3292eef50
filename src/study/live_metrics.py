"""Per-epoch metrics to MLflow while a model trains: a Lightning callback that writes in batches.

Kept apart from study.tracking so that commands which only talk to MLflow (a sweep's parent,
reproduce, compare) do not import Lightning.
"""

from __future__ import annotations

import contextlib
import time

import pytorch_lightning as pl
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient


class MetricsLogger(pl.Callback):
    """Sends each epoch's metrics (step = epoch) to MLflow in batches.

    One `log_batch` per `flush_every_s` seconds instead of one write per metric per epoch:
    a synchronous sqlite write costs ~10 ms, far more than an epoch of a small MLP.
    """

    def __init__(self, client: MlflowClient, run_id: str, flush_every_s: float = 5.0) -> None:
        self.client = client
        self.run_id = run_id
        self.flush_every_s = flush_every_s
        self._pending: list[Metric] = []
        self._sent_epochs = 0
        self._last_flush = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        history: list[dict[str, float]] = getattr(pl_module, "history", [])
        now_ms = int(time.time() * 1000)
        for row in history[self._sent_epochs :]:
            epoch = int(row["epoch"])
            self._pending += [
                Metric(name, float(value), now_ms, epoch)
                for name, value in row.items()
                if name != "epoch"
            ]
        self._sent_epochs = len(history)
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flush()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        with contextlib.suppress(Exception):  # never hide the error that stopped training
            self.flush()

    def flush(self) -> None:
        # MLflow takes at most 1000 metrics per batch.
        for start in range(0, len(self._pending), 1000):
            self.client.log_batch(self.run_id, metrics=self._pending[start : start + 1000])
        self._pending = []
        self._last_flush = time.monotonic()

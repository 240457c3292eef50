"""Lightning callbacks of a run: metrics to MLflow in batches, the best weights kept, a
trial's reports to its Optuna pruner, and progress counted in epochs.

Kept apart from study.tracking so that commands which only talk to MLflow (a sweep's parent,
reproduce, compare) do not import Lightning.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self, TextIO

import pytorch_lightning as pl
import torch
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from tqdm import tqdm

from study.tasks import epoch_history
from study.tracking import clean_number, final_metrics, redacted_tags

if TYPE_CHECKING:
    import optuna

_MAX_BATCH = 1000  # metrics and tags together in one MLflow log_batch


class MetricsLogger(pl.Callback):
    """Sends each epoch's metrics (step = epoch) to MLflow in batches.

    One `log_batch` per `flush_every_s` seconds instead of one write per metric per epoch:
    a synchronous sqlite write costs ~10 ms, far more than an epoch of a small MLP. What is
    still buffered when training ends goes out with the run's final metrics and tags in one
    write (`finish`), or, if the run fails first, when the logger's `with` block ends.
    """

    def __init__(self, client: MlflowClient, run_id: str, flush_every_s: float = 5.0) -> None:
        self.client = client
        self.run_id = run_id
        self.flush_every_s = flush_every_s
        self._pending: list[Metric] = []
        self._sent_epochs = 0
        self._last_flush = time.monotonic()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.flush()
            return
        with contextlib.suppress(Exception):  # never hide the error that stopped the run
            self.flush()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.buffer(getattr(pl_module, "history", []))
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def buffer(self, history: Sequence[Mapping[str, float]]) -> None:
        """Queue the epochs of `history` not queued yet (step = epoch)."""
        now_ms = int(time.time() * 1000)
        for row in history[self._sent_epochs :]:
            epoch = int(row["epoch"])
            self._pending += [
                Metric(name, clean_number(value), now_ms, epoch)
                for name, value in row.items()
                if name != "epoch"
            ]
        self._sent_epochs = max(self._sent_epochs, len(history))

    def finish(
        self,
        values: Mapping[str, float],
        tags: Mapping[str, str],
        history: Sequence[Mapping[str, float]] = (),
    ) -> None:
        """The curve's epochs not sent yet, the run's final metrics (step 0) and its tags: one
        write."""
        self.buffer(history)
        self._pending += final_metrics(values)
        self.flush(redacted_tags(tags))

    def flush(self, tags: list[RunTag] | None = None) -> None:
        metrics, self._pending = self._pending, []
        tags = tags or []  # a handful: MLflow takes up to 100 per batch
        head = _MAX_BATCH - len(tags)
        if metrics or tags:
            self.client.log_batch(self.run_id, metrics=metrics[:head], tags=tags)
        for start in range(head, len(metrics), _MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + _MAX_BATCH])
        self._last_flush = time.monotonic()


class KeepBestWeights(pl.Callback):
    """Keeps the weights of the epoch of lowest validation loss in memory; saves them once.

    Lightning's ModelCheckpoint writes a file at every improvement (2-3 ms each, about 13% of a
    small MLP's run here); a copy of a few thousand floats in memory costs microseconds.
    """

    def __init__(self) -> None:
        self.best_loss = math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        row = epoch_history(pl_module)[-1]
        if row["val/loss"] < self.best_loss:  # False for NaN: a diverged epoch is never best
            self.best_loss, self.best_epoch = row["val/loss"], int(row["epoch"])
            self.best_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def restore_and_save(self, model: pl.LightningModule, path: Path) -> Path | None:
        """Load the best weights into `model` and write them as a checkpoint file."""
        if self.best_state is None:
            return None
        model.load_state_dict(self.best_state)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": self.best_state, "epoch": self.best_epoch}, path)
        return path


class TrialReporter(pl.Callback):
    """Reports the best value so far each epoch so the pruner can stop a hopeless trial.

    A pruned or diverged trial stops like an early-stopped one (`should_stop`), so its run is
    closed normally with its whole curve logged; the objective then tells Optuna it was pruned.
    """

    def __init__(
        self,
        trial: optuna.Trial,
        metric: str,
        maximize: bool,
        diverge_level: float = 3.0,
        prune: bool = True,
    ) -> None:
        self.trial = trial
        self.metric = metric
        self.maximize = maximize
        self.diverge_level = diverge_level
        self.prune = prune  # without a pruner, asking costs a storage round trip per epoch
        self.best: float | None = None
        self.stop_reason: str | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        row = epoch_history(pl_module)[-1]
        value = row.get(self.metric, math.nan)
        # Exploding (the diagnosis's diverge_level x a constant predictor's loss) or NaN.
        limit = self.diverge_level * getattr(pl_module, "baseline_loss", math.nan)
        exploded = math.isfinite(limit) and row["train/loss"] > limit
        if exploded or not math.isfinite(row["train/loss"]) or not math.isfinite(value):
            self.stop_reason = "diverged"
            trainer.should_stop = True
            return
        if self.best is None or (value > self.best if self.maximize else value < self.best):
            self.best = value
        self.trial.report(self.best, step=int(row["epoch"]))
        if self.prune and self.trial.should_prune():
            self.stop_reason = "pruned"
            trainer.should_stop = True

    def outcome_tags(self) -> dict[str, str]:
        """How the trial ended, for its run's final write."""
        return trial_outcome(self.stop_reason, self.best, self.metric)


def trial_outcome(stop_reason: str | None, best: float | None, metric: str) -> dict[str, str]:
    """A trial's state and why, from why it stopped early (pruned, diverged) and its best value."""
    if stop_reason is not None:
        return {"trial_state": "PRUNED", "reason": stop_reason}
    if best is None:
        return {"trial_state": "FAIL", "reason": f"metric {metric!r} was never logged"}
    return {"trial_state": "COMPLETE"}


class EpochProgress(pl.Callback):
    """Training progress in epochs, with the epoch's losses.

    Lightning's own bar counts batches, and one Lightning batch is a whole epoch here (see
    study.tasks), so it shows "1/1" for every epoch. In a terminal this draws a bar over the
    epochs; elsewhere (a file, a CI log) it prints a plain line for about every tenth of the
    epochs and the last one, instead of carriage-return updates.
    """

    def __init__(self, stream: TextIO | None = None, lines: int = 10) -> None:
        self.stream = stream or sys.stdout
        self.lines = lines
        self._bar: tqdm | None = None
        self._every = 1
        self._printed = 0  # the last epoch printed as a line

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = trainer.max_epochs or 0
        if self.stream.isatty():
            # A terminal that reports no size (a bare pty) gets 80x24: tqdm would draw nothing.
            columns, lines = shutil.get_terminal_size()
            self._bar = tqdm(
                total=total,
                bar_format="{n_fmt}/{total_fmt} epochs |{bar:12}| {elapsed}<{remaining}{postfix}",
                file=self.stream,
                ncols=columns,
                nrows=lines,
            )
        self._every = max(1, math.ceil(total / self.lines))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        row = epoch_history(pl_module)[-1]
        epoch = int(row["epoch"])
        if self._bar is not None:
            losses = {name: row[name] for name in ("train/loss", "val/loss")}
            self._bar.set_postfix_str(_epoch_values(losses), refresh=False)
            self._bar.update(epoch - self._bar.n)
        elif epoch % self._every == 0 or epoch == trainer.max_epochs:
            self._line(epoch, trainer.max_epochs, row)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        history = epoch_history(pl_module)
        if self._bar is None and history and self._printed < history[-1]["epoch"]:
            self._line(int(history[-1]["epoch"]), trainer.max_epochs, history[-1], " (stopped)")
        self._close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._close()

    def _line(
        self, epoch: int, total: int | None, row: Mapping[str, float], note: str = ""
    ) -> None:
        print(f"epoch {epoch}/{total}  {_epoch_values(row)}{note}", file=self.stream, flush=True)
        self._printed = epoch

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _epoch_values(row: Mapping[str, float]) -> str:
    """ "train/loss 0.4123  val/loss 0.4567  val/acc 0.8750": train/loss first, as on the plot."""
    names = sorted((n for n in row if n != "epoch"), key=lambda name: name != "train/loss")
    return "  ".join(f"{name} {row[name]:.4f}" for name in names)

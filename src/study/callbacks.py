"""Lightning callbacks of a run: metrics to MLflow in batches (study.run_log), the best weights
kept, a trial's reports to its Optuna pruner, and progress counted in epochs.

Kept apart from study.tracking and study.run_log so that commands which only talk to MLflow (a
sweep's parent, reproduce, compare) and packed workers do not import Lightning.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import pytorch_lightning as pl
import torch
from tqdm import tqdm

from study.run_log import RunLog, trial_outcome
from study.tasks import epoch_history
from study.terminal import redraws

if TYPE_CHECKING:
    import optuna


class MetricsLogger(RunLog, pl.Callback):
    """RunLog as a Lightning callback: each epoch's row buffered as the epoch ends."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.buffer(getattr(pl_module, "history", []))
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()


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
        if redraws(self.stream):
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

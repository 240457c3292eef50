"""The Lightning engine: fit(cfg) builds data, model and trainer from a validated config and
trains one model, under the epoch rules every engine shares (study.epochs)."""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback
from tqdm import tqdm

from study.data import REGRESSION, PreparedData, Splits, device_name, prepare_data
from study.diagnosis import CURVES
from study.epochs import EpochJudge, EpochReport, EpochRules, FitResult
from study.errors import redraws
from study.models import EpochLoader, MLPModel, epoch_history
from study.run_log import RunLog


def quiet_lightning() -> None:
    """Lightning's advice about worker processes and small batch counts does not apply to
    batches sliced from in-memory tensors; its banner lines are noise in every run's output."""
    for noisy in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*The number of training batches.*")
    warnings.filterwarnings("ignore", message=r".*is an invalid type.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # Lightning 2.6 on torch 2.13


def seed_everything(seed: int) -> None:
    pl.seed_everything(seed, workers=False, verbose=False)
    # Bitwise-identical reruns on CPU: pick deterministic kernels wherever torch has them.
    torch.use_deterministic_algorithms(True, warn_only=True)


class EpochEnd(Callback):
    """The epoch rules (study.epochs) in a Lightning run: each epoch's row judged, the best
    weights kept, the run's metrics log fed, and training stopped when the rules say so.

    The best weights stay in memory: Lightning's ModelCheckpoint writes a file at every
    improvement (2-3 ms each, about 13% of a small MLP's run here); a copy of a few thousand
    floats costs microseconds.
    """

    def __init__(self, judge: EpochJudge, log: RunLog | None = None) -> None:
        self.judge = judge
        self.metrics_log = log
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        history = epoch_history(pl_module)
        if self.judge.end_epoch(history[-1]):
            self.best_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        if self.metrics_log is not None:
            self.metrics_log.epoch_ended(history)
        if self.judge.stop_reason is not None:
            trainer.should_stop = True

    def restore_and_save(self, model: pl.LightningModule, path: Path) -> Path | None:
        """Load the best weights into `model` and write them as a checkpoint file."""
        if self.best_state is None:
            return None
        model.load_state_dict(self.best_state)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": self.best_state, "epoch": self.judge.best_epoch}, path)
        return path


def fit(
    cfg: DictConfig,
    output_dir: Path,
    prepared: PreparedData | None = None,
    *,
    log: RunLog | None = None,
    report: EpochReport | None = None,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train the model `cfg` describes; keep the best checkpoint in `output_dir`.

    The config must already be validated (study.validate). `log` gets each epoch's metrics,
    `report` each epoch's row (a trial's pruner: it may stop the run); extra Lightning
    `callbacks` run after the epoch rules.
    """
    quiet_lightning()
    prepared = prepared or prepare_data(cfg)
    data, splits = prepared.data, prepared.splits
    seed_everything(int(cfg.seed))
    trainer_cfg = cfg.trainer
    epoch_end = EpochEnd(
        EpochJudge(EpochRules.from_config(cfg), splits.baseline_loss(), report), log
    )
    all_callbacks: list[Callback] = [epoch_end, *callbacks]
    if trainer_cfg.progress_bar:
        all_callbacks.append(EpochProgress())
    device = splits.train.x.device
    trainer = pl.Trainer(
        accelerator="cuda" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=int(trainer_cfg.max_epochs),
        callbacks=all_callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,  # EpochProgress counts epochs, not Lightning's batches
        enable_model_summary=False,
        limit_val_batches=0,  # validation runs inside each epoch's training_step
        deterministic=False,  # set by seed_everything with warn_only; Lightning's flag is strict
        default_root_dir=str(output_dir),
    )
    model = build_model(cfg, splits)
    started = time.perf_counter()
    trainer.fit(model, EpochLoader(data.train_batches(splits), splits.val))
    fit_seconds = time.perf_counter() - started

    model.to(device)  # Lightning's teardown moves a GPU model back to the CPU
    best_path = epoch_end.restore_and_save(model, output_dir / "checkpoints" / "best.ckpt")
    return FitResult.judged(
        cfg,
        model.history,
        test_metrics=model.evaluate(splits.test, "test"),
        checkpoint=best_path,
        device=device_name(device),
        data_fingerprint=splits.fingerprint,
        stop_reason=epoch_end.judge.stop_reason,
        fit_seconds=fit_seconds,
        baseline_loss=splits.baseline_loss(),
    )


def build_model(cfg: DictConfig, splits: Splits) -> MLPModel:
    extra = {"target_scale": splits.target_scale} if splits.task == REGRESSION else {}
    return instantiate(
        cfg.model,
        in_features=splits.n_features,
        out_features=splits.n_outputs,
        optimizer=instantiate(cfg.optimizer),
        **extra,
    )


class EpochProgress(pl.Callback):
    """Training progress in epochs, with the epoch's losses.

    Lightning's own bar counts batches, and one Lightning batch is a whole epoch here (see
    study.models), so it shows "1/1" for every epoch. In a terminal this draws a bar over the
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
            losses = {name: row[name] for name in CURVES}
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

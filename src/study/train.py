"""fit(cfg): build data, model and trainer from a validated config and train one model."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback, EarlyStopping

from study.callbacks import EpochProgress, KeepBestWeights
from study.data import REGRESSION, Splits, TabularData
from study.diagnosis import Diagnosis, Thresholds, best_row, diagnose_history
from study.errors import UserError
from study.tasks import EpochLoader, MLPTask

# Lightning's advice about worker processes and small batch counts does not apply to batches
# sliced from in-memory tensors; its banner lines are noise in every run's output.
for _noisy in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*The number of training batches.*")
warnings.filterwarnings("ignore", message=r".*is an invalid type.*")
warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # Lightning 2.6 on torch 2.13


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
    fit_seconds: float = 0.0  # wall time inside Lightning's fit (the training steps)

    @property
    def best(self) -> dict[str, float]:
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


def seed_everything(seed: int) -> None:
    pl.seed_everything(seed, workers=False, verbose=False)
    # Bitwise-identical reruns on CPU: pick deterministic kernels wherever torch has them.
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class PreparedData:
    data: TabularData
    splits: Splits


def resolve_device(accelerator: str) -> torch.device:
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible here: "
            "use trainer.accelerator=auto or cpu"
        )
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    return torch.device("cpu")


def prepare_data(cfg: DictConfig) -> PreparedData:
    """Load, split and standardize the data on the training device; UserError if unusable."""
    try:
        data: TabularData = instantiate(cfg.data)
    except InstantiationException as error:  # Hydra wraps what the constructor raised
        if isinstance(error.__cause__, UserError):
            raise error.__cause__ from None
        raise
    model_class: type[MLPTask] = get_class(cfg.model._target_)
    task = model_class.task
    return PreparedData(data, data.prepare(task, resolve_device(cfg.trainer.accelerator)))


def fit(
    cfg: DictConfig,
    output_dir: Path,
    callbacks: Sequence[Callback] = (),
    prepared: PreparedData | None = None,
) -> FitResult:
    """Train the model `cfg` describes; keep the best checkpoint in `output_dir`.

    The config must already be validated (study.validate). Extra `callbacks` (metric logging,
    pruning) are added to Lightning's early stopping and checkpointing.
    """
    prepared = prepared or prepare_data(cfg)
    data, splits = prepared.data, prepared.splits
    seed_everything(int(cfg.seed))
    trainer_cfg = cfg.trainer
    best_weights = KeepBestWeights()
    all_callbacks: list[Callback] = [*callbacks, best_weights]
    early_stopping = trainer_cfg.early_stopping
    if early_stopping.enabled:
        all_callbacks.append(
            EarlyStopping(
                monitor="val/loss",
                mode="min",
                patience=int(early_stopping.patience),
                min_delta=float(early_stopping.min_delta),
                check_finite=True,
                check_on_train_epoch_end=True,
            )
        )
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
    model.baseline_loss = splits.baseline_loss()  # callbacks judge divergence against it
    started = time.perf_counter()
    trainer.fit(model, EpochLoader(data.train_batches(splits), splits.val))
    fit_seconds = time.perf_counter() - started

    model.to(device)  # Lightning's teardown moves a GPU model back to the CPU
    best_path = best_weights.restore_and_save(model, output_dir / "checkpoints" / "best.ckpt")
    test_metrics = model.evaluate(splits.test, "test")
    baseline = model.baseline_loss
    return FitResult(
        history=model.history,
        test_metrics=test_metrics,
        checkpoint=best_path,
        device=device_name(device),
        data_fingerprint=splits.fingerprint,
        stopped_early=trainer.should_stop,
        fit_seconds=fit_seconds,
        baseline_loss=baseline,
        diagnosis=diagnose_history(
            model.history, Thresholds.from_config(cfg.get("diagnosis")), baseline
        ),
    )


def build_model(cfg: DictConfig, splits: Splits) -> MLPTask:
    extra = {"target_scale": splits.target_scale} if splits.task == REGRESSION else {}
    return instantiate(
        cfg.model,
        in_features=splits.n_features,
        out_features=splits.n_outputs,
        optimizer=instantiate(cfg.optimizer),
        **extra,
    )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index or 0
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)

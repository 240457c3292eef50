"""fit(cfg): build data, model and trainer from a validated config and train one model."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback, EarlyStopping

from study.callbacks import EpochProgress, KeepBestWeights
from study.data import REGRESSION, Splits
from study.diagnosis import Thresholds, diagnose_history
from study.fit_result import FitResult
from study.prepare import PreparedData, device_name, prepare_data
from study.tasks import EpochLoader, MLPTask

# Lightning's advice about worker processes and small batch counts does not apply to batches
# sliced from in-memory tensors; its banner lines are noise in every run's output.
for _noisy in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*The number of training batches.*")
warnings.filterwarnings("ignore", message=r".*is an invalid type.*")
warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # Lightning 2.6 on torch 2.13


def seed_everything(seed: int) -> None:
    pl.seed_everything(seed, workers=False, verbose=False)
    # Bitwise-identical reruns on CPU: pick deterministic kernels wherever torch has them.
    torch.use_deterministic_algorithms(True, warn_only=True)


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

"""The bridge from a run's config to the packed engine: a config as a pack member, a member's
outcome as a FitResult.

A trial trained in a pack records `trainer.engine: packed` in its config, so its run reproduces
through the same code path, alone (`fit_packed`): a member's numbers do not depend on its pack
mates, so they come out identical on CPU.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from study.data import PreparedData, device_name
from study.epochs import EpochReport, EpochRules, FitResult
from study.packed.loop import OptimizerRecipe, train_alone
from study.packed.network import Arch, StackedMLP
from study.packed.schedule import Member

PACKED = "packed"


def is_packed(cfg: DictConfig) -> bool:
    return cfg.trainer.get("engine") == PACKED


def arch_of(cfg: DictConfig, n_features: int, n_outputs: int) -> Arch:
    return Arch(n_features, n_outputs, tuple(cfg.model.hidden_sizes), str(cfg.model.activation))


def optimizer_of(cfg: DictConfig) -> OptimizerRecipe:
    recipe: OptimizerRecipe = instantiate(cfg.optimizer)
    return recipe


def member_of(cfg: DictConfig, key: Any = None, report: EpochReport | None = None) -> Member:
    """The run `cfg` describes as a member of a pack; `report` hears its epochs."""
    return Member(
        seed=int(cfg.seed),
        lr=float(cfg.optimizer.lr),
        weight_decay=float(cfg.optimizer.get("weight_decay", 0.0)),
        dropout=float(cfg.model.dropout),
        batch_size=int(cfg.data.batch_size),
        rules=EpochRules.from_config(cfg),
        report=report,
        key=key,
    )


def packed_result(
    cfg: DictConfig, member: Member, prepared: PreparedData, output_dir: Path, fit_seconds: float
) -> FitResult:
    """What a single run's fit returns, for a member trained in a pack; its best weights are
    saved as the run's checkpoint, loadable into the model a single run builds."""
    splits = prepared.splits
    checkpoint = None
    if member.best_weights is not None:
        net = StackedMLP(arch_of(cfg, splits.n_features, splits.n_outputs), slots=1)
        checkpoint = output_dir / "checkpoints" / "best.ckpt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        state = net.state_dict_of(member.best_weights, member.dropout)
        torch.save({"state_dict": state, "epoch": member.best_epoch}, checkpoint)
    return FitResult.judged(
        cfg,
        member.history,
        test_metrics=member.test_metrics,
        checkpoint=checkpoint,
        device=device_name(splits.train.x.device),
        data_fingerprint=splits.fingerprint,
        stop_reason=member.stop_reason,
        baseline_loss=splits.baseline_loss(),
        fit_seconds=fit_seconds,
    )


def fit_packed(
    cfg: DictConfig, output_dir: Path, prepared: PreparedData, report: EpochReport | None = None
) -> FitResult:
    """Train `cfg` as a pack of one: how a packed trial is rerun."""
    splits = prepared.splits
    started = time.perf_counter()
    member = train_alone(
        member_of(cfg, report=report),
        splits,
        arch_of(cfg, splits.n_features, splits.n_outputs),
        optimizer_of(cfg),
        pad_rows=cfg.trainer.get("pad_rows"),
    )
    return packed_result(cfg, member, prepared, output_dir, time.perf_counter() - started)

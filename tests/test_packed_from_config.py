"""study.packed.from_config: a run's config as a pack member, and a packed run's result and
checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from helpers import tiny
from study.data import prepare_data
from study.packed import PACKED, arch_of, fit_packed, is_packed, member_of, train_pack
from study.train import build_model

MakeCfg = Callable[..., DictConfig]


def _packed(make_cfg: MakeCfg, *overrides: str) -> DictConfig:
    cfg = make_cfg(*tiny("trainer.max_epochs=6", *overrides))
    cfg.trainer.engine = PACKED
    return cfg


def test_a_member_carries_the_runs_settings(make_cfg: MakeCfg) -> None:
    cfg = _packed(make_cfg, "seed=3", "optimizer=adamw", "optimizer.lr=0.02", "model.dropout=0.25")
    member = member_of(cfg, key="k")
    assert (member.seed, member.lr, member.dropout, member.key) == (3, 0.02, 0.25, "k")
    assert member.weight_decay == cfg.optimizer.weight_decay > 0
    assert member.batch_size == cfg.data.batch_size
    assert member.rules.max_epochs == 6
    assert member.rules.patience == cfg.trainer.early_stopping.patience
    cfg.trainer.early_stopping.enabled = False
    assert member_of(cfg).rules.patience is None
    assert is_packed(cfg)
    assert not is_packed(make_cfg())


@pytest.mark.parametrize("model", ["classifier", "regressor"])
def test_a_packed_runs_checkpoint_loads_into_the_single_runs_model(
    make_cfg: MakeCfg, tmp_path: Path, model: str
) -> None:
    cfg = _packed(make_cfg, f"model={model}", "model.dropout=0.2")
    prepared = prepare_data(cfg)
    result = fit_packed(cfg, tmp_path, prepared)
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4, 5, 6]
    assert result.checkpoint is not None
    model_ = build_model(cfg, prepared.splits)
    model_.load_state_dict(torch.load(result.checkpoint, weights_only=True)["state_dict"])
    model_.eval()
    with torch.no_grad():
        test = model_.metrics(model_(prepared.splits.test.x), prepared.splits.test.y)
    for name, value in test.items():
        assert result.test_metrics[f"test/{name}"] == pytest.approx(value.item(), rel=1e-4)
    assert result.diagnosis.verdict in ("underfit", "good", "overfit", "diverged")


def test_a_packed_run_alone_matches_the_same_trial_inside_a_pack(
    make_cfg: MakeCfg, tmp_path: Path
) -> None:
    cfg = _packed(make_cfg, "model.dropout=0.3", "data.batch_size=16")
    prepared = prepare_data(cfg)
    alone = fit_packed(cfg, tmp_path, prepared)
    splits = prepared.splits
    mates = [member_of(cfg), member_of(cfg)]
    mates[1].lr, mates[1].batch_size = 0.05, 64
    from hydra.utils import instantiate

    packed = train_pack(
        mates,
        splits,
        arch_of(cfg, splits.n_features, splits.n_outputs),
        instantiate(cfg.optimizer),
        slots=2,
    )
    inside = next(member for member in packed if member.lr == cfg.optimizer.lr)
    assert inside.history == alone.history

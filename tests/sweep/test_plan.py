"""study.sweep.plan: how many trials a worker packs (sweep.pack)."""

from __future__ import annotations

import optuna
import pytest
from omegaconf import DictConfig, OmegaConf

from study.errors import UserError
from study.sweep.plan import AUTO_PACK, pack_size
from study.sweep.pool import Slot
from study.sweep.space import Param

Distributions = optuna.distributions
LR = Param("optimizer.lr", Distributions.FloatDistribution(1e-4, 1e-1, log=True), False)
BATCH = Param("data.batch_size", Distributions.CategoricalDistribution([16, 128]), False)
DROPOUT = Param("model.dropout", Distributions.FloatDistribution(0.0, 0.5), False)
WIDTH = Param("model.hidden_sizes", Distributions.CategoricalDistribution(["[8]", "[64]"]), False)
OPTIMIZER = Param("optimizer", Distributions.CategoricalDistribution(["adam", "sgd"]), True)
CPU2 = [Slot(0, None), Slot(1, None)]
GPU1 = [Slot(0, "0")]


def _cfg(hidden_sizes: list[int] | None = None) -> DictConfig:
    return OmegaConf.create({"model": {"hidden_sizes": hidden_sizes or [32, 32]}})


def test_auto_packs_a_quarter_of_the_study_spread_over_the_workers() -> None:
    assert pack_size("auto", _cfg(), [LR, BATCH, DROPOUT], 64, CPU2) == 8
    assert pack_size("auto", _cfg(), [LR, BATCH, DROPOUT], 20, CPU2) == 3
    assert pack_size("auto", _cfg(), [LR, BATCH, DROPOUT], 4, CPU2) == 1


def test_auto_is_capped_per_device_and_lower_for_wide_layers() -> None:
    assert pack_size("auto", _cfg(), [LR], 10_000, CPU2) == AUTO_PACK["cpu"]
    assert pack_size("auto", _cfg(), [LR], 10_000, GPU1) == AUTO_PACK["gpu"]
    assert pack_size("auto", _cfg([256, 256]), [LR], 10_000, CPU2) == AUTO_PACK["cpu"] // 8


@pytest.mark.parametrize("param", [WIDTH, OPTIMIZER])
def test_auto_is_one_when_the_search_changes_what_a_pack_shares(param: Param) -> None:
    assert pack_size("auto", _cfg(), [LR, param], 64, CPU2) == 1


def test_a_number_is_taken_as_it_is() -> None:
    assert pack_size(7, _cfg(), [LR, BATCH], 64, CPU2) == 7
    assert pack_size(1, _cfg(), [LR, WIDTH], 64, CPU2) == 1


def test_a_pack_of_trials_that_cannot_share_it_is_refused_naming_the_path() -> None:
    with pytest.raises(UserError, match=r"sweep.pack=4: trials that search model.hidden_sizes"):
        pack_size(4, _cfg(), [LR, WIDTH], 64, CPU2)


@pytest.mark.parametrize("setting", [0, -1, 2.5, "many", True])
def test_a_pack_size_that_is_not_auto_or_a_positive_integer_is_refused(setting: object) -> None:
    with pytest.raises(UserError, match=r"sweep.pack=.* is out of range"):
        pack_size(setting, _cfg(), [LR], 64, CPU2)

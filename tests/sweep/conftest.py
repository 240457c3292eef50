"""A study's plan made in this process, as the sweeper makes it inside Hydra."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from study.paths import CONF_DIR
from study.sweep.plan import SweepPlan, plan_sweep


@pytest.fixture
def make_plan(tmp_path: Path) -> Callable[..., SweepPlan]:
    """plan_sweep on conf/sweep.yaml with overrides; the study's journal in tmp_path."""

    def _make(*overrides: str) -> SweepPlan:
        given = [f"sweep.storage={tmp_path / 'study.journal'}", *overrides]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("sweep", overrides=given, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # ${hydra:...} resolves, as in the sweeper
        choices = {str(group): choice for group, choice in cfg.hydra.runtime.choices.items()}
        return plan_sweep(cfg, given, str(CONF_DIR), "sweep", tmp_path / "sweep", choices)

    return _make

"""The jobs behind scripts/: what each command does once its config is composed."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from study.cli import run_hydra


def train_job(cfg: DictConfig) -> float:
    """One tracked training run (Hydra's task function); returns its best validation loss."""
    from hydra.core.hydra_config import HydraConfig

    from study.experiment import run_one

    hydra_cfg = HydraConfig.get()
    outcome = run_one(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))
    result = outcome.result
    print(
        f"run {outcome.run_id} on {result.device}: best epoch {result.best_epoch} of "
        f"{result.stopped_epoch}, best val/loss {result.best_val_loss:.4f}"
    )
    print(
        "  test: "
        + ", ".join(f"{k.removeprefix('test/')} {v:.4f}" for k, v in result.test_metrics.items())
    )
    print(f"  reproduce: python scripts/reproduce.py {outcome.run_id}")
    return result.best_val_loss


def run_main() -> int:
    return run_hydra(train_job, sys.argv[1:])

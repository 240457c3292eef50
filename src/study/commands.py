"""The jobs behind scripts/: what each command does once its config is composed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig

from study.cli import run_hydra


def train_job(cfg: DictConfig) -> float:
    """One tracked training run (Hydra's task function); returns its best validation loss."""
    from hydra.core.hydra_config import HydraConfig

    from study.validate import validate

    validate(cfg)  # before importing MLflow and Lightning: bad input is reported in seconds
    from study.compare import PARENT_RUN_ENV
    from study.experiment import run_one

    hydra_cfg = HydraConfig.get()
    outcome = run_one(
        cfg,
        Path(hydra_cfg.runtime.output_dir),
        list(hydra_cfg.overrides.task),
        run_name=cfg.tracking.get("run_name"),
        parent_run_id=os.environ.get(PARENT_RUN_ENV),  # set by `-m compare`
    )
    result = outcome.result
    print(
        f"run {outcome.run_id} on {result.device}: best epoch {result.best_epoch} of "
        f"{result.stopped_epoch}, best val/loss {result.best_val_loss:.4f}"
    )
    print(
        "  test: "
        + ", ".join(f"{k.removeprefix('test/')} {v:.4f}" for k, v in result.test_metrics.items())
    )
    print(f"  fit: {result.diagnosis.verdict} ({result.diagnosis.reason})")
    print(f"  reproduce: python scripts/reproduce.py {outcome.run_id}")
    return result.best_val_loss


def run_main() -> int:
    return run_hydra(train_job, sys.argv[1:])


def reproduce_main(argv: list[str] | None = None) -> int:
    from study.errors import OneLineParser, report

    parser = OneLineParser(description="Rerun an MLflow run from what it logged.")
    parser.add_argument("run_id")
    parser.add_argument("--tracking-uri", help="store holding the run (default: the project's)")
    try:
        args = parser.parse_args(argv)
        from study.reproduce import reproduce  # torch, Lightning, MLflow: after the arguments

        return reproduce(args.run_id, args.tracking_uri)
    except Exception as error:
        return report(error)


def ui_main(argv: list[str] | None = None) -> int:
    from study.ui import main

    return main(argv)

"""study.epochs: the epoch rules, defined once, and the same stop in both engines (a Lightning
run and a packed member) for each rule."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from omegaconf import DictConfig

from helpers import tiny
from study.data import prepare_data
from study.epochs import (
    DIVERGED,
    EARLY_STOPPED,
    FAILED,
    MAX_EPOCHS,
    PRUNED,
    EpochJudge,
    EpochRules,
    FitResult,
)
from study.packed import PACKED, fit_packed
from study.train import fit

MakeCfg = Callable[..., DictConfig]
ENGINES = ["single", PACKED]


def _row(epoch: int, train: float, val: float) -> dict[str, float]:
    return {"epoch": float(epoch), "train/loss": train, "val/loss": val}


PATIENT = EpochRules(max_epochs=100, patience=3)


def _judge(*vals: float, rules: EpochRules = PATIENT, **kwargs: object) -> EpochJudge:
    judge = EpochJudge(rules, baseline_loss=0.7, **kwargs)  # type: ignore[arg-type]
    for epoch, val in enumerate(vals, start=1):
        judge.end_epoch(_row(epoch, 0.5, val))
        if judge.stop_reason is not None:
            break
    return judge


def test_the_best_epoch_is_the_lowest_validation_loss_and_nan_is_never_best() -> None:
    judge = EpochJudge(EpochRules(patience=None), baseline_loss=0.7)
    improved = [judge.end_epoch(_row(e, 0.5, v)) for e, v in enumerate([0.6, 0.4, 0.5], 1)]
    assert improved == [True, True, False]
    assert (judge.best_epoch, judge.best_val_loss) == (2, 0.4)
    assert not EpochJudge(EpochRules(), 0.7).end_epoch(_row(1, 0.5, math.nan))


@pytest.mark.parametrize(
    ("train", "val", "stops"),
    [
        (math.nan, 0.5, True),
        (0.5, math.nan, True),  # a NaN validation loss with a finite training loss
        (math.inf, 0.5, True),
        (2.2, 0.5, True),  # finite, but above 3 x the 0.7 baseline
        (2.0, 0.5, False),
    ],
)
def test_divergence_is_a_loss_not_finite_or_above_the_level(
    train: float, val: float, stops: bool
) -> None:
    judge = EpochJudge(EpochRules(diverge_level=3.0), baseline_loss=0.7)
    judge.end_epoch(_row(1, train, val))
    assert judge.stop_reason == (DIVERGED if stops else None)


def test_early_stopping_counts_epochs_without_an_improvement_larger_than_min_delta() -> None:
    rules = EpochRules(max_epochs=100, patience=2, min_delta=0.1)
    judge = _judge(1.0, 0.95, 0.85, 0.8, 0.9, rules=rules)
    # 0.95 is not 0.1 below 1.0; 0.85 is (a new reference); 0.8 is not: stop at epoch 4.
    assert (judge.stop_reason, judge.best_epoch) == (EARLY_STOPPED, 4)
    assert _judge(1.0, 0.95, 0.85, 0.8, rules=EpochRules(patience=2)).stop_reason is None


def test_the_last_epoch_stops_with_max_epochs_and_patience_none_never_stops_early() -> None:
    judge = _judge(1.0, 1.0, 1.0, 1.0, rules=EpochRules(max_epochs=4, patience=None))
    assert judge.stop_reason == MAX_EPOCHS


def test_a_report_can_stop_a_run_and_one_that_raises_fails_it() -> None:
    def prune_at_2(row: Mapping[str, float]) -> str | None:
        return PRUNED if row["epoch"] == 2 else None

    assert _judge(0.9, 0.8, 0.7, report=prune_at_2).stop_reason == PRUNED

    def broken(row: Mapping[str, float]) -> str | None:
        raise RuntimeError("storage unreachable")

    judge = EpochJudge(EpochRules(), 0.7, broken)
    with pytest.raises(RuntimeError, match="storage unreachable"):
        judge.end_epoch(_row(1, 0.5, 0.5))
    assert judge.stop_reason == FAILED


def test_divergence_comes_before_the_report() -> None:
    heard: list[float] = []

    def report(row: Mapping[str, float]) -> str | None:
        heard.append(row["epoch"])
        return None

    judge = EpochJudge(EpochRules(), 0.7, report)
    judge.end_epoch(_row(1, math.nan, 0.5))
    assert judge.stop_reason == DIVERGED and heard == []


# Each rule once per engine: a rule changed in study.epochs changes both.


def _train(
    engine: str,
    make_cfg: MakeCfg,
    tmp_path: Path,
    *overrides: str,
    report: Callable[[Mapping[str, float]], str | None] | None = None,
) -> FitResult:
    cfg = make_cfg(*tiny(*overrides))
    cfg.trainer.engine = engine
    prepared = prepare_data(cfg)
    if engine == PACKED:
        return fit_packed(cfg, tmp_path, prepared, report=report)
    return fit(cfg, tmp_path, prepared, report=report)


@pytest.mark.parametrize("engine", ENGINES)
def test_each_engine_stops_patience_epochs_after_its_best(
    engine: str, make_cfg: MakeCfg, tmp_path: Path
) -> None:
    result = _train(
        engine,
        make_cfg,
        tmp_path,
        "trainer.max_epochs=60",
        "trainer.early_stopping.patience=2",
        "optimizer.lr=0.05",
    )
    assert result.stop_reason == EARLY_STOPPED
    assert result.stopped_epoch == result.best_epoch + 2 < 60


@pytest.mark.parametrize("engine", ENGINES)
def test_each_engine_counts_only_improvements_larger_than_min_delta(
    engine: str, make_cfg: MakeCfg, tmp_path: Path
) -> None:
    result = _train(
        engine,
        make_cfg,
        tmp_path,
        "trainer.max_epochs=20",
        "trainer.early_stopping.patience=2",
        "trainer.early_stopping.min_delta=10",  # no epoch improves on the first by that much
    )
    assert (result.stop_reason, result.stopped_epoch) == (EARLY_STOPPED, 3)


@pytest.mark.parametrize("engine", ENGINES)
def test_each_engine_stops_a_diverging_run(engine: str, make_cfg: MakeCfg, tmp_path: Path) -> None:
    result = _train(
        engine, make_cfg, tmp_path, "optimizer=sgd", "optimizer.lr=1e4", "trainer.max_epochs=10"
    )
    assert result.stop_reason == DIVERGED
    assert result.stopped_epoch < 10
    assert result.diagnosis.verdict == "diverged"


@pytest.mark.parametrize("engine", ENGINES)
def test_each_engine_stops_where_its_report_says(
    engine: str, make_cfg: MakeCfg, tmp_path: Path
) -> None:
    heard: list[float] = []

    def prune_at_3(row: Mapping[str, float]) -> str | None:
        heard.append(row["epoch"])
        return PRUNED if row["epoch"] == 3 else None

    result = _train(engine, make_cfg, tmp_path, "trainer.max_epochs=8", report=prune_at_3)
    assert (result.stop_reason, result.stopped_epoch, heard) == (PRUNED, 3, [1.0, 2.0, 3.0])

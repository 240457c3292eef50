"""The diagnosis rules on synthetic curves, exactly at and just past each threshold."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from study.config import validate
from study.diagnosis import (
    DIVERGED,
    GOOD,
    OVERFIT,
    PRUNED,
    UNDERFIT,
    Thresholds,
    counts_line,
    diagnose,
    diagnose_history,
    smooth,
    verdict_counts,
)
from study.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
# The defaults (underfit_level 0.8, still_falling 0.01, window 10, overfit_rise 0.25, ...) on
# the raw curves: each rule is checked exactly at its threshold; smoothing has its own tests.
T = Thresholds(smoothing=1)


def flat(value: float, n: int) -> list[float]:
    return [value] * n


def settled(*values: float) -> list[float]:
    """`values`, then a flat tail as long as the window: nothing is still falling at the end."""
    return [*values, *flat(values[-1], T.window)]


def test_defaults_match_conf_train_yaml() -> None:
    section = OmegaConf.load(ROOT / "conf" / "train.yaml").diagnosis
    assert Thresholds.from_config(section) == Thresholds()


# --- overfit: val/loss ends `overfit_rise` above its minimum while train/loss fell -----------


def test_overfit_exactly_at_the_rise_threshold() -> None:
    # 0.5 -> 0.625 is a rise of exactly 25% (both are exact binary fractions).
    d = diagnose([0.6, 0.5, 0.4, 0.3], [0.7, 0.5, 0.6, 0.625], T, baseline=1.0)
    assert d.verdict == OVERFIT
    assert d.val_rise == 0.25
    assert d.best_epoch == 2


def test_val_rise_just_below_the_threshold_is_good() -> None:
    d = diagnose([0.6, 0.5, 0.4, 0.3], [0.7, 0.5, 0.6, 0.62], T, baseline=1.0)
    assert d.verdict == GOOD


def test_val_rise_with_train_rising_too_is_not_overfit() -> None:
    d = diagnose([0.6, 0.4, 0.5, 0.45], [0.7, 0.5, 0.6, 0.7], T, baseline=1.0)
    assert d.verdict == GOOD
    assert "train/loss did not keep falling" in d.reason


def test_overfit_rise_is_a_setting() -> None:
    curves = ([0.6, 0.5, 0.4, 0.3], [0.7, 0.5, 0.6, 0.625])
    assert diagnose(*curves, Thresholds(overfit_rise=0.3), baseline=1.0).verdict == GOOD


# --- underfit: train/loss stays near a constant predictor's, or both still fall steeply ------


def test_underfit_when_train_loss_never_drops_below_the_level() -> None:
    d = diagnose(settled(1.0, 0.9, 0.8), settled(1.0, 0.9, 0.85), T, baseline=1.0)
    assert d.verdict == UNDERFIT
    assert "80%" in d.reason


def test_train_loss_just_below_the_level_is_not_underfit() -> None:
    d = diagnose(settled(1.0, 0.9, 0.79), settled(1.0, 0.9, 0.85), T, baseline=1.0)
    assert d.verdict == GOOD


def test_level_is_in_units_of_the_baseline() -> None:
    # The same numbers underfit a binary classifier (baseline ln 2) but not a 10-class one.
    curves = (settled(0.7, 0.6), settled(0.7, 0.6))
    assert diagnose(*curves, T, baseline=math.log(2)).verdict == UNDERFIT
    assert diagnose(*curves, T, baseline=math.log(10)).verdict == GOOD


def test_underfit_when_val_still_falls_at_the_threshold_rate() -> None:
    # Baseline 100: val falls exactly 1 (= 0.01 x baseline) per epoch over the last 10 epochs.
    train = [50.0 - i for i in range(20)]
    val = [60.0 - i for i in range(20)]
    d = diagnose(train, val, T, baseline=100.0)
    assert d.verdict == UNDERFIT
    assert "train longer" in d.reason


def test_a_dip_and_climb_at_the_end_is_not_still_falling() -> None:
    # Over the last 10 epochs val/loss falls 3.7 per epoch on average (a least-squares slope),
    # but its minimum is at epoch 15 of 20 and it has climbed since.
    train = [50.0 - i for i in range(20)]
    val = [*flat(80.0, 10), 80.0, 70.0, 60.0, 50.0, 40.0, 41.0, 42.0, 43.0, 44.0, 45.0]
    assert diagnose(train, val, T, baseline=100.0).verdict == GOOD


def test_val_falling_just_slower_than_the_threshold_is_good() -> None:
    train = [50.0 - i for i in range(20)]
    val = [60.0 - 0.9 * i for i in range(20)]
    assert diagnose(train, val, T, baseline=100.0).verdict == GOOD


def test_a_minimum_at_the_last_epoch_reads_still_falling_and_suggests_more_epochs() -> None:
    # Too slow a fall for the underfit rule, but val/loss is lowest at the very last epoch.
    train = [50.0 - i for i in range(20)]
    val = [60.0 - 0.9 * i for i in range(20)]
    d = diagnose(train, val, T, baseline=100.0)
    assert (d.verdict, d.best_epoch) == (GOOD, 20)
    assert "still falling at epoch 20, the last" in d.reason
    assert "more epochs" in d.reason
    assert "bottomed out" not in d.reason


def test_a_minimum_before_the_last_epoch_reads_bottomed_out() -> None:
    d = diagnose(settled(1.0, 0.5, 0.3), [1.0, 0.5, 0.3, *flat(0.31, T.window)], T, baseline=1.0)
    assert (d.verdict, d.best_epoch) == (GOOD, 3)
    assert d.reason.startswith("val/loss bottomed out at epoch 3 and ended 3% above it")


def test_still_falling_needs_train_loss_falling_too() -> None:
    train = flat(50.0, 20)
    val = [60.0 - i for i in range(20)]
    assert diagnose(train, val, T, baseline=100.0).verdict == GOOD


def test_only_the_last_window_of_epochs_counts_as_still_falling() -> None:
    fell_early = [60.0 - 2 * i for i in range(10)] + flat(40.0, 10)
    assert diagnose(fell_early, fell_early, T, baseline=100.0).verdict == GOOD
    falls_late = flat(60.0, 10) + [60.0 - 2 * i for i in range(10)]
    assert diagnose(falls_late, falls_late, T, baseline=100.0).verdict == UNDERFIT


# --- diverged: a loss that is not finite, or train/loss above diverge_level x baseline --------


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_loss_is_diverged(bad: float) -> None:
    d = diagnose([0.7, 0.5, bad], [0.7, 0.5, bad], T, baseline=0.7)
    assert d.verdict == DIVERGED
    assert "epoch 3" in d.reason
    assert d.best_epoch == 2


def test_a_nan_validation_loss_with_a_finite_training_loss_is_diverged() -> None:
    d = diagnose([0.7, 0.5, 0.4], [0.7, 0.5, math.nan], T, baseline=0.7)
    assert d.verdict == DIVERGED
    assert "epoch 3" in d.reason


def test_train_loss_exactly_at_the_diverge_level_is_not_diverged() -> None:
    d = diagnose([3.0, 0.5, 0.4], [0.6, 0.5, 0.45], T, baseline=1.0)
    assert d.verdict != DIVERGED


def test_train_loss_above_the_diverge_level_is_diverged_even_if_it_recovers() -> None:
    d = diagnose([3.01, 0.5, 0.4], [0.6, 0.5, 0.45], T, baseline=1.0)
    assert d.verdict == DIVERGED
    assert "epoch 1" in d.reason


def test_diverged_wins_over_overfit() -> None:
    # A learning rate far too large: train/loss explodes, so its later fall is no overfitting.
    d = diagnose([500.0, 80.0, 0.7, 0.6], [40.0, 0.4, 0.6, 0.7], T, baseline=0.7)
    assert d.verdict == DIVERGED


# --- the early-stopping point and the gaps --------------------------------------------------


def test_best_epoch_is_the_first_minimum_of_val_loss_and_gaps_are_val_minus_train() -> None:
    d = diagnose([0.9, 0.5, 0.25, 0.125], [1.0, 0.5, 0.5, 0.75], T, baseline=1.0)
    assert (d.best_epoch, d.best_val_loss) == (2, 0.5)
    assert d.gap_at_best == 0.0
    assert d.gap_final == 0.625
    assert d.metrics() == {"gap_at_best": 0.0, "gap_final": 0.625, "val_rise": 0.5}


def test_one_epoch_is_enough_to_diagnose() -> None:
    assert diagnose([0.75], [0.75], T, baseline=1.0).verdict == GOOD
    assert diagnose([0.9], [0.9], T, baseline=1.0).verdict == UNDERFIT


def test_without_a_baseline_the_level_rule_is_skipped() -> None:
    d = diagnose(settled(1.0, 0.95), settled(1.0, 0.95), T, baseline=None)
    assert d.verdict == GOOD
    assert d.unit == 1.0  # the first epoch's train/loss


def test_diagnose_history_reads_rows() -> None:
    rows = [
        {"epoch": 1.0, "train/loss": 0.6, "val/loss": 0.7},
        {"epoch": 2.0, "train/loss": 0.5, "val/loss": 0.5},
        {"epoch": 3.0, "train/loss": 0.3, "val/loss": 0.625},
    ]
    assert diagnose_history(rows, T, baseline=1.0).verdict == OVERFIT


def test_curves_must_be_non_empty_and_equally_long() -> None:
    with pytest.raises(ValueError):
        diagnose([], [])
    with pytest.raises(ValueError):
        diagnose([1.0, 0.5], [1.0])


# --- thresholds come from config and are checked at the boundary ----------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("diagnosis.window=0", "diagnosis.window"),
        ("diagnosis.window=2.5", "diagnosis.window"),
        ("diagnosis.smoothing=0", "diagnosis.smoothing"),
        ("diagnosis.smoothing=1.5", "diagnosis.smoothing"),
        ("diagnosis.overfit_rise=-0.1", "diagnosis.overfit_rise"),
        ("diagnosis.underfit_level=nan", "diagnosis.underfit_level"),
        ("diagnosis.diverge_level=1", "diagnosis.diverge_level"),
        ("diagnosis.still_falling=fast", "diagnosis.still_falling"),
        ("+diagnosis.patience=3", "diagnosis.patience"),
    ],
)
def test_validate_names_a_bad_threshold(
    make_cfg: Callable[..., DictConfig], override: str, key: str
) -> None:
    with pytest.raises(UserError, match=key):
        validate(make_cfg(override))


def test_a_config_without_a_diagnosis_section_uses_the_defaults() -> None:
    assert Thresholds.from_config(None) == Thresholds()


# --- smoothing: one noisy epoch decides nothing ---------------------------------------------


def test_smooth_is_a_centered_moving_median_that_drops_a_lone_spike() -> None:
    assert smooth([1.0, 1.0, 9.0, 1.0, 1.0], 3) == [1.0, 1.0, 1.0, 1.0, 1.0]
    assert smooth([1.0, 2.0, 3.0, 4.0], 1) == [1.0, 2.0, 3.0, 4.0]
    assert smooth([4.0, 3.0, 2.0, 1.0, 0.0], 5) == [3.0, 2.5, 2.0, 1.5, 1.0]


def test_one_noisy_last_epoch_is_not_overfit() -> None:
    train = [1.0 - 0.05 * i for i in range(15)]
    val = [*(0.6 - 0.02 * i for i in range(14)), 0.6]  # bottomed out at 0.34, one spike
    assert diagnose(train, val, T, baseline=1.0).verdict == OVERFIT  # raw: fooled
    assert diagnose(train, val, Thresholds(), baseline=1.0).verdict == GOOD


def test_a_sustained_rise_is_overfit_when_smoothed() -> None:
    train = [1.0 - 0.05 * i for i in range(15)]
    val = [*(0.6 - 0.05 * i for i in range(8)), *(0.25 + 0.04 * i for i in range(1, 8))]
    d = diagnose(train, val, Thresholds(), baseline=1.0)
    assert d.verdict == OVERFIT
    assert "(median of 5 epochs)" in d.reason


def test_val_rising_while_train_only_wobbles_is_not_overfit() -> None:
    # Small batches, a high learning rate: train/loss scatters around a level, val/loss too.
    train = [0.5, 0.3, *([0.2, 0.16, 0.22, 0.17, 0.19] * 3)]
    val = [0.5, 0.2, 0.15, 0.16, 0.14, *([0.2, 0.22, 0.19, 0.23] * 3)][: len(train)]
    assert diagnose(train, val, Thresholds(), baseline=1.0).verdict == GOOD


def test_a_long_run_whose_val_loss_never_bends_is_underfit() -> None:
    # 0.1% of the baseline an epoch: too slow for the still-falling rate, but no bend at all.
    train = [1.0 - 0.001 * i for i in range(300)]
    val = [0.9 - 0.001 * i for i in range(300)]
    d = diagnose(train, val, Thresholds(), baseline=1.0)
    assert d.verdict == UNDERFIT
    assert "as steeply over the last 10 epochs as on average" in d.reason


def test_a_long_run_that_bent_is_good() -> None:
    train = [0.2 + 0.8 * math.exp(-i / 10) for i in range(300)]
    val = [0.3 + 0.6 * math.exp(-i / 10) for i in range(300)]
    assert diagnose(train, val, Thresholds(), baseline=1.0).verdict == GOOD


# --- the labelled runs: real trainings recorded by tools/record_curves.py --------------------

LABELLED = json.loads((ROOT / "tests" / "data" / "labelled_curves.json").read_text())


def _judged(kind: str) -> list[tuple[str, str, str]]:
    return [
        (
            case["name"],
            case["label"],
            diagnose_history(case["history"], None, case["baseline"]).verdict,
        )
        for case in LABELLED
        if case["kind"] == kind
    ]


def test_the_labelled_set_holds_every_verdict_and_noisy_good_runs() -> None:
    clear = {label for _, label, _ in _judged("clear")}
    assert clear == {UNDERFIT, GOOD, OVERFIT, DIVERGED}
    assert sum(label == GOOD for _, label, _ in _judged("noisy")) >= 4


def test_every_clear_labelled_run_gets_its_label() -> None:
    wrong = [(name, label, got) for name, label, got in _judged("clear") if got != label]
    assert not wrong, f"{len(wrong)} of {len(_judged('clear'))} clear runs misjudged: {wrong}"


def test_no_noisy_good_run_is_called_overfit() -> None:
    judged = _judged("noisy")
    overfit = [name for name, label, got in judged if label == GOOD and got == OVERFIT]
    assert not overfit


def test_the_raw_rules_misjudged_the_noisy_runs_the_smoothed_ones_get_right() -> None:
    # What smoothing buys, on the same recordings: without it, noisy good runs read overfit.
    raw = [
        diagnose_history(case["history"], T, case["baseline"]).verdict
        for case in LABELLED
        if case["kind"] == "noisy" and case["label"] == GOOD
    ]
    assert raw.count(OVERFIT) >= 2


# --- a study's trials counted by verdict ------------------------------------------------------


def test_verdict_counts_list_every_verdict_in_one_order() -> None:
    counts = verdict_counts([GOOD, PRUNED, GOOD, OVERFIT])
    assert counts == {GOOD: 2, UNDERFIT: 0, OVERFIT: 1, DIVERGED: 0, PRUNED: 1}
    assert counts_line(counts) == "2 good, 0 underfit, 1 overfit, 0 diverged, 1 pruned"

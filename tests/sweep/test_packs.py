"""A trial reports to its study's pruner every epoch (study.sweep.trials.TrialReport), and a
packed trial stops inside its pack when the pruner says so (the packs: tests/test_packed.py)."""

from __future__ import annotations

import functools

import optuna
import pytest
import torch

from study.data import CLASSIFICATION, LectureData
from study.epochs import PRUNED, EpochRules
from study.packed import Arch, Member, train_pack
from study.sweep.backends import make_pruner
from study.sweep.trials import TrialReport

GOOD_CURVE = {1: 0.3, 2: 0.2, 3: 0.1}


def _study(pruner: str) -> optuna.Study:
    """Five finished trials (as many as the median pruner waits for) with good curves."""
    study = optuna.create_study(pruner=make_pruner(pruner, max_epochs=10, in_flight=2))
    for _ in range(5):
        trial = study.ask()
        for step, value in GOOD_CURVE.items():
            trial.report(value, step)
        study.tell(trial, min(GOOD_CURVE.values()))
    return study


def _report(study: optuna.Study, pruner: str, trial: optuna.Trial) -> TrialReport:
    return TrialReport(trial, "val/loss", maximize=False, prune=pruner != "none")


def _epochs(report: TrialReport, losses: list[float]) -> list[str | None]:
    return [
        report({"epoch": float(epoch), "train/loss": 0.5, "val/loss": loss})
        for epoch, loss in enumerate(losses, start=1)
    ]


@pytest.mark.parametrize(("pruner", "stops"), [("median", [PRUNED]), ("none", [None])])
def test_a_hopeless_trial_is_pruned_when_the_study_has_a_pruner(
    pruner: str, stops: list[str | None]
) -> None:
    study = _study(pruner)
    hopeless = study.ask()
    # Its first epoch, past the pruner's warm-up: 0.9 against the others' 0.3.
    assert _epochs(_report(study, pruner, hopeless), [0.9]) == stops


def test_each_epoch_reports_the_best_value_so_far() -> None:
    study = _study("none")
    trial = study.ask()
    assert _epochs(_report(study, "none", trial), [0.9, 0.95, 0.7]) == [None] * 3
    frozen = study.get_trials(deepcopy=False)[trial.number]
    assert frozen.intermediate_values == {1: 0.9, 2: 0.9, 3: 0.7}


@pytest.mark.parametrize("pruner", ["none", "median"])
def test_a_trial_as_good_as_the_others_trains_on(pruner: str) -> None:
    study = _study(pruner)
    trial = study.ask()
    assert _epochs(_report(study, pruner, trial), list(GOOD_CURVE.values())) == [None] * 3


@pytest.mark.parametrize(("pruner", "epochs"), [("median", 1), ("none", 3)])
def test_the_pruner_stops_members_inside_a_real_pack(pruner: str, epochs: int) -> None:
    """Members trained as one pack, each reporting to its own trial: against finished trials
    at 0.3-0.1, a fresh lecture MLP (val/loss ~0.6 after one epoch) is hopeless."""
    study = _study(pruner)
    splits = LectureData(n_samples=200, seed=0).prepare(CLASSIFICATION)
    trials = [study.ask() for _ in range(2)]
    members = [
        Member(seed=i, lr=1e-3, rules=EpochRules(max_epochs=3), report=_report(study, pruner, t))
        for i, t in enumerate(trials)
    ]
    train_pack(members, splits, Arch(2, 1, (8,)), functools.partial(torch.optim.Adam), slots=2)
    expected = PRUNED if pruner == "median" else "max_epochs"
    assert [(m.stop_reason, len(m.history)) for m in members] == [(expected, epochs)] * 2
    for trial in trials:
        reported = study.get_trials(deepcopy=False)[trial.number].intermediate_values
        assert sorted(reported) == list(range(1, epochs + 1))

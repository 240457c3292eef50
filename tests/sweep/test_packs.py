"""study.sweep.packs: a packed trial reports to its study's pruner every epoch and stops when
the pruner says so (the packs themselves: tests/test_packed.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import optuna
import pytest

from study.packed import Member
from study.sweep.backends import make_pruner
from study.sweep.packs import PackRunner

GOOD_CURVE = {1: 0.3, 2: 0.2, 3: 0.1}


def _runner(study: optuna.Study, pruner: str, trial: optuna.Trial) -> PackRunner:
    """A PackRunner holding `trial` in its pack: what on_epoch_end reads, nothing more."""
    runner = PackRunner.__new__(PackRunner)
    spec: Any = SimpleNamespace(metric="val/loss", pruner=pruner, direction="minimize")
    runner.spec, runner.maximize, runner.study = spec, False, study
    runner.running = {trial.number: SimpleNamespace(trial=trial, best=None)}  # type: ignore[dict-item]
    return runner


def _study(pruner: str) -> optuna.Study:
    """Five finished trials (as many as the median pruner waits for) with good curves."""
    study = optuna.create_study(pruner=make_pruner(pruner, max_epochs=10, in_flight=2))
    for _ in range(5):
        trial = study.ask()
        for step, value in GOOD_CURVE.items():
            trial.report(value, step)
        study.tell(trial, min(GOOD_CURVE.values()))
    return study


def _epochs(runner: PackRunner, trial: optuna.Trial, losses: list[float]) -> list[str | None]:
    member = Member(seed=0, lr=1e-3, key=trial.number)
    return [
        runner.on_epoch_end(member, {"epoch": float(epoch), "val/loss": loss})
        for epoch, loss in enumerate(losses, start=1)
    ]


@pytest.mark.parametrize(("pruner", "stops"), [("median", ["pruned"]), ("none", [None])])
def test_a_hopeless_packed_trial_is_pruned_when_the_study_has_a_pruner(
    pruner: str, stops: list[str | None]
) -> None:
    study = _study(pruner)
    hopeless = study.ask()
    # Its first epoch, past the pruner's warm-up: 0.9 against the others' 0.3.
    assert _epochs(_runner(study, pruner, hopeless), hopeless, [0.9]) == stops


def test_each_epoch_reports_the_best_value_so_far() -> None:
    study = _study("none")
    trial = study.ask()
    assert _epochs(_runner(study, "none", trial), trial, [0.9, 0.95, 0.7]) == [None] * 3
    frozen = study.get_trials(deepcopy=False)[trial.number]
    assert frozen.intermediate_values == {1: 0.9, 2: 0.9, 3: 0.7}


@pytest.mark.parametrize("pruner", ["none", "median"])
def test_a_packed_trial_as_good_as_the_others_trains_on(pruner: str) -> None:
    study = _study(pruner)
    trial = study.ask()
    assert _epochs(_runner(study, pruner, trial), trial, list(GOOD_CURVE.values())) == [None] * 3

"""study.sweep.budget: sweep.timeout checked at the boundary, and the session's deadline."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from helpers import TINY
from study.errors import UserError
from study.sweep.budget import Budget, check_timeout
from study.sweep.plan import SweepPlan

MakePlan = Callable[..., SweepPlan]


def test_no_timeout_is_no_budget(make_plan: MakePlan) -> None:
    plan = make_plan(*TINY)
    assert plan.timeout is None
    budget = Budget.start(plan.timeout)
    assert (budget.deadline, budget.left_s(), budget.spent()) == (None, None, False)


@pytest.mark.parametrize(("setting", "seconds"), [("60", 60.0), ("1.5", 1.5)])
def test_a_timeout_in_seconds_reaches_the_plan(
    make_plan: MakePlan, setting: str, seconds: float
) -> None:
    assert make_plan(*TINY, f"sweep.timeout={setting}").timeout == seconds


@pytest.mark.parametrize("setting", ["0", "-5", "soon", "true", "[60]", "inf"])
def test_a_timeout_that_is_not_positive_seconds_is_refused(
    make_plan: MakePlan, setting: str
) -> None:
    with pytest.raises(UserError, match=r"^sweep.timeout=.* (is out of range|is not allowed): "):
        make_plan(*TINY, f"sweep.timeout={setting}")


def test_the_budget_counts_from_the_sessions_start() -> None:
    started = time.monotonic() - 100.0
    assert Budget.start(60.0, started).spent()
    assert not Budget.start(1000.0, started).spent()


def test_the_time_left_is_the_timeout_less_the_time_spent() -> None:
    left = Budget.start(1000.0, time.monotonic() - 100.0).left_s()
    assert left is not None and 899.0 <= left <= 900.0  # a second's slack: not a timing test
    assert Budget.start(1.0, time.monotonic() - 100.0).left_s() == 0.0


@pytest.mark.parametrize("value", [None, 0.5, 7, 3600.0])
def test_check_timeout_keeps_null_and_positive_seconds(value: float | None) -> None:
    assert check_timeout(value) == value

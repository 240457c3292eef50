"""study.sweep.trials: what a trial's run is called."""

from __future__ import annotations

import pytest

from study.sweep.trials import run_name


@pytest.mark.parametrize(
    ("number", "n_trials", "name"),
    [
        (7, 999, "trial 007"),
        (0, 10, "trial 0"),
        (9, 10, "trial 9"),
        (10, 11, "trial 10"),
        (3, 100, "trial 03"),
        (0, 1, "trial 0"),
    ],
)
def test_run_names_are_padded_to_the_digits_of_the_last_trial(
    number: int, n_trials: int, name: str
) -> None:
    assert run_name(number, n_trials) == name


def test_padded_names_sort_as_their_numbers_do() -> None:
    names = [run_name(number, 120) for number in range(120)]
    assert sorted(names) == names

"""study.sweep.trials: a trial's run name; a worker whose parent is gone exits quietly."""

from __future__ import annotations

import os

import pytest

from study.sweep.spec import Ready
from study.sweep.trials import TrialRunner, run_name


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


def test_a_worker_whose_parent_is_gone_exits_with_one_line_not_a_traceback() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # the parent died: nobody reads the events any more
    runner = TrialRunner.__new__(TrialRunner)  # emit needs no spec, store or study
    runner.index, runner.events_fd = 3, write_fd
    try:
        with pytest.raises(SystemExit) as caught:  # Python exits on it without a traceback
            runner.emit(Ready())
    finally:
        os.close(write_fd)
    assert str(caught.value) == "worker 3: the sweep's parent is gone: exiting"
    assert not isinstance(caught.value, Exception)  # a trial's `except Exception` lets it pass

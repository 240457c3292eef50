"""study.sweep.progress: the study's progress line, every field of it."""

from __future__ import annotations

import io
import re
import sys
import time
from pathlib import Path

import optuna
import pytest

from study.sweep.backends import make_storage
from study.sweep.budget import Budget
from study.sweep.progress import ProgressLine, Tally, read_tally
from study.sweep.spec import Finished

LINE = re.compile(
    r"^\[(?P<name>\S+)\] (?P<finished>\d+)/(?P<total>\d+) finished, (?P<pruned>\d+) pruned, "
    r"(?P<failed>\d+) failed, (?P<running>\d+) running \| best (?P<best>.+?) \| "
    r"(?P<elapsed>\d+:\d\d) elapsed, ETA (?P<eta>[^,\s]+)(?:, (?P<budget>.+))?$"
)


def _line(
    tally: Tally, already: int = 0, elapsed_s: float = 90.0, budget: Budget | None = None
) -> dict[str, str]:
    read = lambda: Tally(tally.n_trials, already)  # noqa: E731
    progress = ProgressLine("lecture", tally.n_trials, read, budget)
    progress.start -= elapsed_s
    found = LINE.match(progress.render(tally))
    assert found, progress.render(tally)
    return found.groupdict()


def test_every_field_of_the_line_comes_from_the_study() -> None:
    tally = Tally(20, finished=6, pruned=2, failed=1, running=2, best_value=0.1234, best_number=4)
    fields = _line(tally)
    assert fields["name"] == "lecture"
    assert (fields["finished"], fields["total"]) == ("6", "20")
    assert (fields["pruned"], fields["failed"], fields["running"]) == ("2", "1", "2")
    assert fields["best"] == "0.1234 (trial 4)"
    assert fields["elapsed"] == "1:30"
    assert fields["eta"] == "3:30"  # 14 left at 15 s each


def test_the_eta_of_a_resumed_study_counts_only_this_sessions_trials() -> None:
    # 10 finished before this session; 2 more in 60 s: 8 left at 30 s each.
    fields = _line(Tally(20, finished=12), already=10, elapsed_s=60.0)
    assert (fields["finished"], fields["best"]) == ("12", "-")
    assert fields["eta"] == "4:00"


def test_before_any_trial_of_this_session_the_eta_is_unknown() -> None:
    assert _line(Tally(20, finished=10), already=10)["eta"] == "?"


def test_the_tally_counts_each_state_of_the_studys_trials_and_its_best(tmp_path: Path) -> None:
    # The default storage, a journal file, as every worker and host writes it.
    study = optuna.create_study(study_name="s", storage=make_storage(str(tmp_path / "j.journal")))
    states = [
        ("COMPLETE", 0.5), ("PRUNED", None), ("COMPLETE", 0.2), ("FAIL", None),
        ("PRUNED", None), ("COMPLETE", 0.9), ("FAIL", None), ("FAIL", None), ("RUNNING", None),
    ]  # fmt: skip
    for state, value in states:
        trial = study.ask()
        if state != "RUNNING":
            study.tell(trial, value, state=optuna.trial.TrialState[state])
    tally = read_tally(study, n_trials=20)
    assert tally == Tally(
        n_trials=20, finished=5, pruned=2, failed=3, running=1, best_value=0.2, best_number=2
    )


def test_the_tally_of_a_study_with_no_complete_trial_has_no_best(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="s", storage=make_storage(str(tmp_path / "j.journal")))
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    assert read_tally(study, n_trials=4) == Tally(4, finished=1, pruned=1)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("env", "redrawn"),
    [({"TERM": "xterm"}, True), ({"TERM": "dumb"}, False), ({"NO_COLOR": "1"}, False)],
)
def test_the_line_is_redrawn_only_on_a_terminal_that_takes_escape_codes(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], redrawn: bool
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    progress = ProgressLine("lecture", 20, lambda: Tally(20, finished=1))
    progress.on_event(Finished(number=0, state="COMPLETE", value=0.5))
    progress.close()
    assert ("\033[K" in terminal.getvalue()) is redrawn
    assert ("\r" in terminal.getvalue()) is redrawn
    assert "[lecture] 1/20 finished" in terminal.getvalue()


def test_without_a_budget_the_line_shows_no_time_left() -> None:
    assert _line(Tally(20, finished=6))["budget"] is None


def test_with_a_budget_the_line_shows_the_time_left() -> None:
    budget = Budget.start(600.0, time.monotonic() - 90.5)  # 509.5 s left: shown as 8:29
    assert _line(Tally(20, finished=6), budget=budget)["budget"] == "8:29 of budget left"


def test_a_spent_budget_shows_the_trials_in_flight_finishing() -> None:
    budget = Budget.start(60.0, time.monotonic() - 90.0)
    assert _line(Tally(20, finished=6), budget=budget)["budget"] == "budget spent: finishing"


def test_a_line_is_printed_when_trials_end_not_when_only_the_running_count_moves(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tallies = iter(
        [
            Tally(5),  # read as the line starts
            Tally(5, finished=2, running=2),
            Tally(5, finished=2, running=1),  # a pack mate claimed or left: no trial ended
            Tally(5, finished=3, running=1),
            Tally(5, finished=3, failed=1, running=0),
        ]
    )
    progress = ProgressLine("tiny", 5, lambda: next(tallies))
    for number in range(4):
        progress.on_event(Finished(number=number, state="COMPLETE", value=0.5))
    lines = capsys.readouterr().out.splitlines()
    assert [LINE.match(line)["finished"] for line in lines] == ["2", "3", "3"]  # type: ignore[index]
    assert [LINE.match(line)["failed"] for line in lines] == ["0", "0", "1"]  # type: ignore[index]

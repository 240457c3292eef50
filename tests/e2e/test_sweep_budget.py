"""`sweep.timeout` as a user runs it: a study whose budget ends it before n_trials, then resumed.

The budget here (a millisecond) is spent before any worker has started, so what each session
runs does not depend on the machine's speed: each worker's first pack and nothing more.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from harness import Sweep

from study.sweep.backends import FINISHED

pytestmark = pytest.mark.slow

# 2 workers x a pack of 2: 4 trials in the first session, of 6.
COMMAND = [
    "data.n_samples=120",
    "model.hidden_sizes=[8]",
    "trainer.max_epochs=3",
    "sweep.workers=2",
    "sweep.pack=2",
    "sweep.n_trials=6",
    "sweep.timeout=0.001",
]


@dataclass
class Sessions:
    sweep: Sweep
    first: subprocess.CompletedProcess[str]
    first_trials: list[optuna.trial.FrozenTrial]
    first_runs: list
    second: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Sessions:
    sweep = Sweep(tmp_path_factory.mktemp("budget"), "budget", *COMMAND)
    first = sweep.run()
    assert first.returncode == 0, (first.stdout, first.stderr)
    first_trials, first_runs = sweep.trials(), sweep.runs()
    second = sweep.run()
    assert second.returncode == 0, (second.stdout, second.stderr)
    return Sessions(sweep, first, first_trials, first_runs, second)


def test_the_budget_ends_the_study_before_n_trials(sessions: Sessions) -> None:
    finished = [t for t in sessions.first_trials if t.state in FINISHED]
    assert len(finished) == 4  # each worker's first pack; none started after the budget
    assert len(sessions.first_trials) == 4


def test_trials_in_flight_finish_and_nothing_is_left_running(sessions: Sessions) -> None:
    assert all(t.state in FINISHED for t in sessions.first_trials)
    assert all(len(t.intermediate_values) >= 1 for t in sessions.first_trials)
    assert [r.info.status for r in sessions.first_runs] == ["FINISHED"] * 5  # parent + 4


def test_the_summary_says_the_budget_ended_the_study(sessions: Sessions) -> None:
    assert (
        "study budget: the time budget (sweep.timeout=0.001 s) ended it: 4 trials ran in this "
        "session, 4/6 finished; rerun the same command to go on with a fresh budget"
    ) in sessions.first.stdout


def test_a_rerun_resumes_with_a_fresh_budget_until_n_trials(sessions: Sessions) -> None:
    trials = sessions.sweep.trials()
    assert sorted(t.number for t in trials) == list(range(6))
    assert all(t.state in FINISHED for t in trials)
    assert sessions.sweep.runs_left_running() == 0
    assert "time budget" not in sessions.second.stdout  # n_trials came first this time
    assert "study budget: 4/6 trials finished" in sessions.second.stdout


def test_an_interrupted_budgeted_study_resumes_with_a_fresh_budget(tmp_path: Path) -> None:
    # Trials long enough that Ctrl-C lands mid-trial; a budget that has not run out by then.
    slow = ["data.n_samples=600", "trainer.max_epochs=30", "trainer.early_stopping.enabled=false"]
    sweep = Sweep(tmp_path, "cut", *slow, "sweep.workers=2", "sweep.pack=1", "sweep.n_trials=6")
    process = sweep.start("sweep.timeout=3600")
    sweep.wait_for_running_trial()
    os.kill(process.pid, signal.SIGINT)
    process.communicate(timeout=120)
    assert process.returncode != 0
    assert sweep.runs_left_running() == 0 and sweep.running_trials() == 0
    before = sweep.finished()
    rerun = sweep.run("sweep.timeout=0.001")  # spent at once: each worker's first trial
    assert rerun.returncode == 0, (rerun.stdout, rerun.stderr)
    assert sweep.finished() == before + 2
    assert f"2 trials ran in this session, {before + 2}/6 finished" in rerun.stdout
    assert sweep.runs_left_running() == 0 and sweep.running_trials() == 0

"""study.sweep.recovery.owner_is_gone: which RUNNING trials of this host lost their worker, told
from real processes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from study.sweep.claims import HOST
from study.sweep.recovery import owner_is_gone
from study.sweep.spec import WORKER_MODULE

pytestmark = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="reads /proc (Linux)")


def trial_of(pid: int, host: str = HOST) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        state=optuna.trial.TrialState.RUNNING, user_attrs={"host": host, "pid": pid}
    )


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose command line names the worker module, as a worker's does."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", WORKER_MODULE]
    )
    yield process
    process.kill()
    process.wait()


def test_a_live_worker_owns_its_trial(sleeper: subprocess.Popen[bytes]) -> None:
    assert not owner_is_gone(trial_of(sleeper.pid))


def test_a_killed_worker_not_yet_reaped_is_gone(sleeper: subprocess.Popen[bytes]) -> None:
    sleeper.kill()
    deadline = time.monotonic() + 10
    while _state(sleeper.pid) != "Z":  # a zombie: dead, its pid still taken until reaped
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert owner_is_gone(trial_of(sleeper.pid))


def test_a_pid_taken_over_by_another_program_is_gone() -> None:
    with subprocess.Popen(["sleep", "60"]) as other:
        try:
            assert owner_is_gone(trial_of(other.pid))
        finally:
            other.kill()


def test_an_exited_worker_is_gone(sleeper: subprocess.Popen[bytes]) -> None:
    sleeper.kill()
    sleeper.wait()
    assert owner_is_gone(trial_of(sleeper.pid))


def test_a_trial_of_another_host_or_without_a_pid_is_left_alone() -> None:
    assert not owner_is_gone(trial_of(2**22 + 1, host=f"not-{HOST}"))
    no_pid = optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING)
    assert not owner_is_gone(no_pid)

"""Each fault of a study as a real scenario: real sweeps, real worker processes, real signals."""

from __future__ import annotations

import signal
from pathlib import Path

import optuna
import pytest
from faults import Sweep, diverging, failing, interrupt, kill_sweep, kill_worker, load
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("pack", [1, 2])
def test_a_killed_worker_fails_each_trial_it_held_and_each_is_retried(
    tmp_path: Path, pack: int
) -> None:
    outcome = kill_worker(tmp_path, f"sweep.pack={pack}")
    assert outcome.ok, outcome
    trials = Sweep(tmp_path).trials()
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == pack  # one trial at a time, or the whole pack the worker trained
    runs = Sweep(tmp_path).runs()
    for trial in failed:
        [retry] = [t for t in trials if t.user_attrs.get("retry_of") == trial.number]
        assert retry.params == trial.params
        assert retry.state == optuna.trial.TrialState.COMPLETE
        killed = [r for r in runs if r.data.tags.get("trial_number") == str(trial.number)]
        assert [r.info.status for r in killed] == ["KILLED"]
    assert all(r.info.status != "RUNNING" for r in runs)


def test_an_interrupted_sweep_closes_everything_and_resumes_to_n_trials(tmp_path: Path) -> None:
    # `kill` (SIGTERM) stops the study while its worker trains a pack of two, Ctrl-C (SIGINT)
    # its resumed run, training one trial at a time, and a rerun ends it.
    stopped = interrupt(tmp_path, signal.SIGTERM, "sweep.workers=1", "sweep.pack=2", resume=False)
    # The packed worker closed its trials' runs KILLED itself (else the parent fails them).
    killed = [r for r in Sweep(tmp_path).runs() if r.info.status == "KILLED"]
    assert any(r.data.params.get("trainer.engine") == "packed" for r in killed), stopped
    resumed = interrupt(tmp_path, signal.SIGINT)
    assert resumed.ok, resumed
    for outcome in (stopped, resumed):
        assert outcome.runs_left_running == 0 and outcome.trials_left_running == 0, outcome
        assert outcome.exit_code not in (0, None), outcome  # an interrupted study did not succeed
        assert outcome.parent_status == "KILLED", outcome
        assert outcome.recover_s is not None and outcome.recover_s < 20  # exits within seconds
        assert outcome.note.split("; ")[1].startswith("0 left running"), outcome
    assert "rerun exit 0" in resumed.note
    numbers = [t.number for t in Sweep(tmp_path).trials()]
    assert len(numbers) == len(set(numbers))
    statuses = {r.info.status for r in Sweep(tmp_path).runs()}
    assert "KILLED" in statuses and "RUNNING" not in statuses


def test_two_ctrl_c_in_a_row_still_close_every_trial_and_run(tmp_path: Path) -> None:
    # The second Ctrl-C lands while the workers close their runs: it must not cut that short.
    outcome = interrupt(tmp_path, signal.SIGINT, "sweep.pack=2", resume=False, again_after_s=0.3)
    assert outcome.runs_left_running == 0 and outcome.trials_left_running == 0, outcome
    assert outcome.exit_code not in (0, None), outcome
    assert outcome.parent_status == "KILLED", outcome


def test_a_rerun_fails_the_trials_a_dead_sweep_left_running(tmp_path: Path) -> None:
    outcome = kill_sweep(tmp_path)
    assert outcome.ok, outcome
    assert outcome.orphans, outcome  # there was something to clean up
    sweep = Sweep(tmp_path)
    trials = sweep.trials()
    children = {
        int(run.data.tags["trial_number"]): run
        for run in sweep.runs()
        if "trial_number" in run.data.tags
    }
    for number in outcome.orphans:
        assert trials[number].state == optuna.trial.TrialState.FAIL
        if number not in children:
            continue  # killed between its claim and its run's creation: no run to close
        run = children[number]
        assert (run.info.status, run.data.tags["trial_state"]) == ("KILLED", "FAIL")
        assert run.data.tags["error"], run.data.tags
    assert any(number in children for number in outcome.orphans)  # a run was closed KILLED


def test_diverging_trials_are_pruned_with_the_reason_and_the_study_goes_on(
    tmp_path: Path,
) -> None:
    outcome = diverging(tmp_path)
    assert outcome.ok, outcome
    runs = [r for r in Sweep(tmp_path).runs() if "trial_number" in r.data.tags]
    assert runs and all(r.data.tags["trial_state"] == "PRUNED" for r in runs)
    assert all(r.data.tags["reason"] == "diverged" for r in runs)
    assert all(r.info.status == "FINISHED" for r in runs)


def test_a_study_whose_trials_all_fail_stops_after_max_failures(tmp_path: Path) -> None:
    outcome = failing(tmp_path)
    assert outcome.runs_left_running == 0 and outcome.trials_left_running == 0
    assert "sweep.max_failures=3" in outcome.note and "exit 2" in outcome.note
    # The device is missing before any run starts, so the reason lives on the trials.
    failed = [t for t in Sweep(tmp_path).trials() if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) >= 3
    assert all("CUDA" in t.user_attrs.get("fail_reason", "") for t in failed)
    assert all(r.info.status != "RUNNING" for r in Sweep(tmp_path).runs())


def test_four_workers_and_a_hundred_trials_lose_no_run_and_no_metric(tmp_path: Path) -> None:
    outcome = load(tmp_path, n_trials=100, workers=4)
    assert outcome.ok, outcome
    assert "'database is locked': False" in outcome.note
    sweep = Sweep(tmp_path)
    client = MlflowClient(sweep.tracking_uri)
    children = [r for r in sweep.runs() if "trial_number" in r.data.tags]
    finished = [t.number for t in sweep.trials() if t.state.is_finished()]
    assert sorted(int(r.data.tags["trial_number"]) for r in children) == sorted(finished)
    for run in children:
        history = client.get_metric_history(run.info.run_id, "val/loss")
        assert [m.step for m in history] == [1, 2]

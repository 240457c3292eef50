"""Claims, heartbeats and retries on a real RDB storage (sqlite, heartbeat every second) and a
real MLflow store: what a host sees of a trial whose host died."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from study.sweep.backends import StudyLock, make_storage
from study.sweep.claims import claim_trial
from study.sweep.recovery import Recovery, StaleTrialCallback
from study.sweep.spec import WORKER_MODULE

GRACE_S = 3  # 3 x heartbeat_s=1

pytestmark = pytest.mark.slow  # each test waits out a grace period


@dataclass
class Shared:
    """One study as two hosts see it; `client` holds the study's parent run."""

    url: str
    storage: optuna.storages.BaseStorage
    study: optuna.Study
    lock: StudyLock
    client: MlflowClient
    experiment_id: str
    parent_run_id: str

    def child_run(self, number: int) -> str:
        tags = {"trial_number": str(number), "mlflow.parentRunId": self.parent_run_id}
        return self.client.create_run(self.experiment_id, tags=tags).info.run_id


@pytest.fixture
def shared(tmp_path: Path, mlflow_client: MlflowClient) -> Shared:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    experiment_id = mlflow_client.create_experiment("quota")
    parent_run_id = mlflow_client.create_run(experiment_id).info.run_id
    on_stale = StaleTrialCallback(mlflow_client, experiment_id, parent_run_id, retries=1)
    storage = make_storage(url, 1, on_stale)
    study = optuna.create_study(study_name="quota", storage=storage)
    lock = StudyLock(url, "quota")
    return Shared(url, storage, study, lock, mlflow_client, experiment_id, parent_run_id)


def _dead_trial(shared: Shared, n_trials: int) -> optuna.Trial:
    """A trial claimed by a worker that then died: no heartbeat after the claim's."""
    trial = claim_trial(shared.study, shared.storage, n_trials, shared.lock)
    assert trial is not None
    trial.suggest_float("x", 0.0, 1.0)
    return trial


def test_a_claim_fails_a_trial_whose_heartbeat_stopped_and_claims_its_retry(
    shared: Shared,
) -> None:
    dead = _dead_trial(shared, n_trials=2)
    time.sleep(GRACE_S + 1)
    retry = claim_trial(shared.study, shared.storage, 2, shared.lock)
    assert retry is not None
    frozen = shared.study.get_trials()
    assert frozen[dead.number].state == optuna.trial.TrialState.FAIL
    assert frozen[retry.number].params == frozen[dead.number].params
    assert frozen[retry.number].user_attrs["retry_of"] == dead.number
    assert frozen[retry.number].system_attrs["failed_trial"] == dead.number


def test_a_trial_whose_heartbeat_stopped_has_its_mlflow_runs_closed_killed(
    shared: Shared,
) -> None:
    dead = _dead_trial(shared, n_trials=2)
    run_id = shared.child_run(dead.number)
    time.sleep(GRACE_S + 1)
    claim_trial(shared.study, shared.storage, 2, shared.lock)
    run = shared.client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["trial_state"] == "FAIL"
    assert "stopped sending heartbeats" in run.data.tags["error"]


def test_a_trial_is_retried_by_heartbeat_at_most_retries_times(shared: Shared) -> None:
    _dead_trial(shared, n_trials=3)
    time.sleep(GRACE_S + 1)
    retry = claim_trial(shared.study, shared.storage, 3, shared.lock)  # the retry, and it dies too
    assert retry is not None
    time.sleep(GRACE_S + 1)
    fresh = claim_trial(shared.study, shared.storage, 3, shared.lock)
    assert fresh is not None
    assert "failed_trial" not in shared.study.get_trials()[fresh.number].system_attrs
    assert not shared.study.get_trials(states=(optuna.trial.TrialState.WAITING,))


def test_a_claim_waits_while_the_last_trial_runs_elsewhere_then_ends(shared: Shared) -> None:
    other = claim_trial(shared.study, shared.storage, 1, shared.lock)
    assert other is not None
    beating = threading.Event()

    def run_elsewhere() -> None:  # a live worker: beats, then completes its trial
        for _ in range(3):
            shared.study._storage.record_heartbeat(other._trial_id)  # type: ignore[attr-defined]
            time.sleep(1)
        shared.study.tell(other, 0.5)
        beating.set()

    thread = threading.Thread(target=run_elsewhere)
    thread.start()
    start = time.monotonic()
    assert claim_trial(shared.study, shared.storage, 1, shared.lock) is None
    waited = time.monotonic() - start
    thread.join()
    assert beating.is_set()
    assert waited >= 2.5


def test_a_claim_that_must_not_wait_is_none_at_once_while_the_last_trial_runs(
    shared: Shared,
) -> None:
    running = claim_trial(shared.study, shared.storage, 1, shared.lock)
    assert running is not None  # a pack's own trial: waiting for it would wait forever
    start = time.monotonic()
    assert claim_trial(shared.study, shared.storage, 1, shared.lock, wait=False) is None
    assert time.monotonic() - start < GRACE_S  # no heartbeat period waited out


def test_without_heartbeats_a_claim_beyond_n_trials_is_none_at_once(tmp_path: Path) -> None:
    url = str(tmp_path / "study.journal")
    storage = make_storage(url)
    study = optuna.create_study(study_name="j", storage=storage)
    lock = StudyLock(url, "j")
    assert claim_trial(study, storage, 1, lock) is not None
    start = time.monotonic()
    assert claim_trial(study, storage, 1, lock) is None
    assert time.monotonic() - start < 5  # a wait would be a grace period or more


def test_recovery_does_not_retry_a_trial_another_host_already_failed(shared: Shared) -> None:
    dead = _dead_trial(shared, n_trials=3)
    time.sleep(GRACE_S + 1)
    # fails it as stale, queues and takes its retry
    claim_trial(shared.study, shared.storage, 3, shared.lock)
    recovery = Recovery(
        shared.study,
        shared.lock,
        shared.client,
        shared.experiment_id,
        shared.parent_run_id,
        retries=1,
    )
    before = len(shared.study.get_trials())
    recovery.worker_lost(dead.number)  # this host's parent notices its worker died, late
    assert len(shared.study.get_trials()) == before
    assert recovery.retried == 0


@pytest.mark.parametrize("retries", [0, 1, 2])
def test_a_trial_whose_worker_died_is_retried_as_often_as_sweep_retries_allows(
    tmp_path: Path, mlflow_client: MlflowClient, retries: int
) -> None:
    url = str(tmp_path / "study.journal")  # a journal: no heartbeats, the parent notices
    storage = make_storage(url)
    study = optuna.create_study(study_name="lost", storage=storage)
    lock = StudyLock(url, "lost")
    experiment_id = mlflow_client.create_experiment("lost")
    parent_run_id = mlflow_client.create_run(experiment_id).info.run_id
    recovery = Recovery(study, lock, mlflow_client, experiment_id, parent_run_id, retries)
    lost = claim_trial(study, storage, 10, lock)
    assert lost is not None
    lost.suggest_float("x", 0.0, 1.0)
    for attempt in range(retries + 1):  # the trial, then each retry, dies with its worker
        recovery.worker_lost(lost.number)
        lost = claim_trial(study, storage, 10, lock)
        assert lost is not None
        lost.suggest_float("x", 0.0, 1.0)  # a retry's value is its original's
        retried = lost.user_attrs.get("retry_of") == 0
        assert retried == (attempt < retries), (attempt, lost.user_attrs)
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert len(failed) == retries + 1
    assert {t.params["x"] for t in failed} == {failed[0].params["x"]}
    assert recovery.retried == retries
    # None had opened its run (as a packed worker killed at once): each gets a KILLED one.
    runs = mlflow_client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'"
    )
    assert sorted(int(r.data.tags["trial_number"]) for r in runs) == [t.number for t in failed]
    for run in runs:
        assert run.info.status == "KILLED"
        assert run.data.params == {"x": str(failed[0].params["x"])}
        assert run.data.tags["error"].startswith("its worker process died")


def test_a_trial_whose_claimer_died_before_naming_itself_is_failed_by_the_next_claim(
    shared: Shared,
) -> None:
    orphan = shared.study.ask()  # created, then the claimer died: no heartbeat, no host, no pid
    # Not failed, it would count as running forever: every claim would wait on it, or give up.
    trial = claim_trial(shared.study, shared.storage, 1, shared.lock, wait=False)
    assert trial is not None and trial.number == orphan.number + 1
    states = [t.state for t in shared.study.get_trials()]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING]
    assert not shared.study.get_trials(states=(optuna.trial.TrialState.WAITING,))  # no retry


def test_a_rerun_fails_a_trial_whose_claimer_died_before_naming_itself(
    tmp_path: Path, mlflow_client: MlflowClient
) -> None:
    url = str(tmp_path / "study.journal")  # a journal: no heartbeats
    storage = make_storage(url)
    study = optuna.create_study(study_name="dead", storage=storage)
    lock = StudyLock(url, "dead")
    experiment_id = mlflow_client.create_experiment("dead")
    parent_run_id = mlflow_client.create_run(experiment_id).info.run_id
    live = claim_trial(study, storage, 3, lock)
    assert live is not None
    study.ask()  # a claim cut short: RUNNING, nameless
    recovery = Recovery(study, lock, mlflow_client, experiment_id, parent_run_id, retries=1)
    with subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", WORKER_MODULE]
    ) as worker:
        try:
            live.set_user_attr("pid", worker.pid)  # another worker's trial, alive
            assert recovery.fail_orphans() == 1
        finally:
            worker.kill()
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL]

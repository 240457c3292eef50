"""Recovering from dead workers: fail their trials and runs, and retry their parameters."""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from study.sweep.backends import StudyLock
from study.sweep.claims import HOST, RUNNING, fail_unclaimed, run_name
from study.sweep.spec import WORKER_MODULE


def retry_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, lock: StudyLock) -> None:
    """Enqueue a failed trial's parameters again, remembering which trial it retries."""
    with lock.held():
        origin = trial.user_attrs.get("retry_of", trial.number)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": origin}, skip_if_exists=False)


def retries_of(study: optuna.Study, number: int) -> int:
    return sum(t.user_attrs.get("retry_of") == number for t in study.get_trials(deepcopy=False))


def owner_is_gone(trial: optuna.trial.FrozenTrial) -> bool:
    """A RUNNING trial whose sweep worker on this host no longer exists.

    A killed worker whose parent died too may linger as a zombie until something reaps it
    (forever in a container whose first process does not): that is gone. So is a process that
    took over its pid and is no sweep worker.
    """
    if trial.user_attrs.get("host") != HOST:
        return False
    pid = trial.user_attrs.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return not is_sweep_worker(pid)


def is_sweep_worker(pid: int) -> bool:
    """Whether `pid` runs a sweep worker, as far as /proc tells (Linux); elsewhere, any live
    process counts as one."""
    if not Path("/proc/self").is_dir():
        return True
    proc = Path("/proc") / str(pid)
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        command = (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False  # gone meanwhile
    return state != "Z" and WORKER_MODULE.encode() in command


def close_trial_runs(
    client: MlflowClient, experiment_id: str, parent_run_id: str, number: int, reason: str
) -> int:
    """Close the trial's MLflow runs still RUNNING as KILLED, saying why; how many runs the
    trial has, closed or not."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.trial_number = '{number}' and tags.mlflow.parentRunId = '{parent_run_id}'"
        ),
    )
    for run in runs:
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, "trial_state", "FAIL")
            client.set_tag(run.info.run_id, "error", reason)
            client.set_terminated(run.info.run_id, "KILLED")
    return len(runs)


@dataclass
class Recovery:
    """What the sweep's parent does about trials whose worker is gone."""

    study: optuna.Study
    lock: StudyLock
    client: MlflowClient
    experiment_id: str
    parent_run_id: str
    retries: int
    n_trials: int = 0  # the study's, for its runs' names (claims.run_name)
    retried: int = 0  # retries queued by this process

    def fail(self, number: int, reason: str) -> None:
        """Fail trial `number` (if still RUNNING) and its runs; queue a retry if allowed."""
        trial = self.study.get_trials(deepcopy=False)[number]
        failed_here = False
        if trial.state == RUNNING:
            with contextlib.suppress(ValueError, RuntimeError):  # another host got there first
                self.study.tell(number, state=optuna.trial.TrialState.FAIL)
                failed_here = True
        runs = close_trial_runs(
            self.client, self.experiment_id, self.parent_run_id, number, reason
        )
        if failed_here and not runs:  # its worker died before the run was opened
            self.record_without_run(trial, reason)
        # Whoever failed it retries it: a trial told COMPLETE just before its worker died, or
        # failed as stale by another host (which queued its retry), is not retried again.
        origin = trial.user_attrs.get("retry_of", number)
        if failed_here and retries_of(self.study, origin) < self.retries:
            retry_trial(self.study, trial, self.lock)
            self.retried += 1

    def record_without_run(self, trial: optuna.trial.FrozenTrial, reason: str) -> None:
        """A KILLED child run for a trial whose worker died before opening its run (a packed
        worker opens it off the training path): every trial the study ran has its run, with
        its parameters and why it failed."""
        tags = {
            MLFLOW_PARENT_RUN_ID: self.parent_run_id,
            "study": self.study.study_name,
            "trial_number": str(trial.number),
            "trial_state": "FAIL",
            "error": f"{reason}, before its run was opened",
        }
        with contextlib.suppress(MlflowException):  # an MLflow gone too: the study goes on
            run_id = self.client.create_run(
                self.experiment_id, run_name=run_name(trial.number, self.n_trials), tags=tags
            ).info.run_id
            params = [Param(name, str(value)) for name, value in trial.params.items()]
            self.client.log_batch(run_id, params=params)
            self.client.set_terminated(run_id, "KILLED")

    def worker_lost(self, number: int) -> None:
        self.fail(number, "its worker process died (killed or crashed)")

    def fail_orphans(self) -> int:
        """Fail RUNNING trials whose worker on this host is gone (a dead sweep, or ours), and
        those whose claimer died before it could name itself."""
        with self.lock.held():
            running = self.study.get_trials(deepcopy=False, states=(RUNNING,))
            unclaimed = fail_unclaimed(self.study, running)
        orphans = [t for t in running if "pid" in t.user_attrs and owner_is_gone(t)]
        for trial in orphans:
            self.fail(trial.number, "left RUNNING by a sweep that died")
        return len(orphans) + unclaimed


class StaleTrialCallback:
    """Called by the RDB storage on each trial whose heartbeat stopped (its host died): close
    the trial's MLflow runs KILLED, then let Optuna queue a retry with its parameters."""

    def __init__(
        self, client: MlflowClient, experiment_id: str, parent_run_id: str, retries: int
    ) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        with warnings.catch_warnings():  # "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retries)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        with contextlib.suppress(Exception):  # an unreachable MLflow must not block the retry
            close_trial_runs(
                self.client,
                self.experiment_id,
                self.parent_run_id,
                trial.number,
                f"its worker on {trial.user_attrs.get('host', '?')} stopped sending heartbeats",
            )
        # The retry copies the user attrs: retry_of names the first trial, as for local retries.
        trial.user_attrs.setdefault("retry_of", trial.number)
        self.retry(study, trial)

"""Many machines on one study: independent `scripts/run.py -m sweep` processes, started at the
same moment as separate hosts would be, each in its own folder and process group, on a real
PostgreSQL storage and an MLflow tracking server whose backend store is PostgreSQL too.

One scenario is shared by the checks (a few sweep processes cost ~1 min on two cores): three
hosts start together; the first one seen mid-trial is killed like a machine that dies (every
process of it at once, none gets to clean up); the other two finish the study.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from helpers import PostgresServer, one_error_line, server_command, wait_until_up
from study.sweep.backends import FINISHED, make_storage
from study.sweep.driver import PARENT_RUN_ATTR
from study.tracking import Store
from study.ui import server_env

RUN = Path(__file__).resolve().parents[2] / "scripts" / "run.py"
STUDY = "multihost"
N_TRIALS = 6
# Trials of a few seconds: long enough to kill a host mid-trial, and for every host to have
# started before the first packs end (a slot takes the next trial the moment its trial stops
# training: with 25 epochs, two busy hosts once took every trial before a loaded third started),
# short enough for a test.
TRIAL = [
    "data.n_samples=400",
    "model.hidden_sizes=[8]",
    "trainer.max_epochs=80",
    "trainer.early_stopping.enabled=false",
]
PARENT_TAG = "mlflow.parentRunId"
SECRET = "pw-s3cret"

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == pid:
            found.append(int(stat.parent.name))
    return found


def _descendants(pid: int) -> list[int]:
    """A sweep's workers (in sessions of their own), its fork server and the workers forked
    from that: deepest first, so that killing them in order leaves none a moment to see its
    parent die."""
    children = _children(pid)
    return [grandchild for child in children for grandchild in _descendants(child)] + children


@dataclass
class TrackingServer:
    url: str
    artifacts: Path

    def client(self) -> MlflowClient:
        return MlflowClient(self.url)


@pytest.fixture(scope="module")
def tracking_server(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrackingServer]:
    """`mlflow server` on a PostgreSQL backend store, artifacts proxied to one folder."""
    with postgres_server.database("mlflow_test") as database:
        artifacts = tmp_path_factory.mktemp("mlartifacts")
        store = Store.from_uri(postgres_server.url(database))
        url = f"http://127.0.0.1:{_free_port()}"
        port = int(url.rsplit(":", 1)[1])
        with open(artifacts.parent / "mlflow_server.log", "wb") as log:
            process = subprocess.Popen(
                server_command(store, "127.0.0.1", port, str(artifacts)),
                env=server_env(store),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until_up(url, process, timeout_s=120)
            yield TrackingServer(url, artifacts)
        finally:
            process.terminate()
            process.wait(timeout=30)


@dataclass
class Host:
    """One machine's sweep: scripts/run.py -m sweep in its own folder and process group."""

    folder: Path
    process: subprocess.Popen[bytes]
    killed: bool = False
    killed_workers: set[int] = field(default_factory=set)

    @classmethod
    def start(cls, folder: Path, *overrides: str) -> Host:
        folder.mkdir(parents=True)
        with open(folder / "stdout.txt", "wb") as out, open(folder / "stderr.txt", "wb") as err:
            process = subprocess.Popen(
                [sys.executable, str(RUN), "-m", "sweep", *overrides],
                cwd=folder,
                stdout=out,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        return cls(folder, process)

    @property
    def stdout(self) -> str:
        return (self.folder / "stdout.txt").read_text()

    @property
    def stderr(self) -> str:
        return (self.folder / "stderr.txt").read_text()

    def kill(self) -> None:
        """Like a machine that dies: every process at once, none gets to clean up."""
        pid = self.process.pid
        os.kill(pid, signal.SIGSTOP)  # frozen first: it must not see its workers die
        descendants = _descendants(pid)
        self.killed_workers = set(descendants)
        for worker in descendants:
            os.kill(worker, signal.SIGKILL)
        os.killpg(pid, signal.SIGKILL)
        self.process.wait()
        self.killed = True

    def trial_numbers(self) -> set[int]:
        """Trials that ran here: each has its folder in this host's sweep dir."""
        return {int(p.name.removeprefix("trial_")) for p in self.folder.glob("sweep/trial_*")}

    def shown_finished(self) -> list[int]:
        """The study's finished count on each of this host's progress lines."""
        return [int(n) for n in re.findall(rf"\[{STUDY}\] (\d+)/{N_TRIALS} finished", self.stdout)]


@dataclass
class Scenario:
    storage: str
    server: TrackingServer
    survivors: list[Host]
    victim: Host
    killed_trial: int
    trials: list[optuna.trial.FrozenTrial] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)

    def parents(self) -> list[Run]:
        return [run for run in self.runs if PARENT_TAG not in run.data.tags]

    def children(self) -> list[Run]:
        return [run for run in self.runs if PARENT_TAG in run.data.tags]


def _load_study(storage: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=STUDY, storage=make_storage(storage))
    except KeyError:  # not created yet
        return None


def _first_host_mid_trial(
    hosts: list[Host], storage: str, client: MlflowClient, timeout_s: float = 180
) -> tuple[Host, int]:
    """The first host seen with a trial RUNNING whose MLflow child run is open too."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for host in hosts:
            assert host.process.poll() is None, (host.stdout, host.stderr)
        study = _load_study(storage)
        experiment = client.get_experiment_by_name(STUDY)
        if study is not None and experiment is not None:
            running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            for host in hosts:
                workers = set(_descendants(host.process.pid))
                for trial in running:
                    if trial.user_attrs.get("pid") not in workers:
                        continue
                    open_runs = client.search_runs(
                        [experiment.experiment_id],
                        filter_string=(
                            f"tags.trial_number = '{trial.number}' "
                            "and attributes.status = 'RUNNING'"
                        ),
                    )
                    if open_runs:
                        return host, trial.number
        time.sleep(0.1)
    raise AssertionError("no host was seen mid-trial")


@pytest.fixture(scope="module")
def hosts(
    postgres_server: PostgresServer,
    tracking_server: TrackingServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Scenario]:
    root = tmp_path_factory.mktemp("hosts")
    with postgres_server.database() as database:
        storage = postgres_server.url(database)
        command = [
            f"sweep.storage={storage}",
            f"tracking.uri={tracking_server.url}",
            f"sweep.study_name={STUDY}",
            f"sweep.n_trials={N_TRIALS}",
            "sweep.workers=1",
            "sweep.pack=2",  # each host trains two trials at a time in one packed model
            "sweep.heartbeat_s=1",  # a dead host's trials are failed after 3 s
            "sweep.sampler=random",
            "sweep.pruner=none",
            *TRIAL,
        ]
        hosts = [
            Host.start(
                root / f"host{i}", f"hydra.sweep.dir={root / f'host{i}' / 'sweep'}", *command
            )
            for i in range(3)
        ]
        try:
            victim, killed_trial = _first_host_mid_trial(hosts, storage, tracking_server.client())
            victim.kill()
            survivors = [host for host in hosts if host is not victim]
            for host in survivors:
                host.process.wait(timeout=300)
            scenario = Scenario(storage, tracking_server, survivors, victim, killed_trial)
            study = _load_study(storage)
            assert study is not None
            scenario.trials = study.get_trials()
            client = tracking_server.client()
            experiment = client.get_experiment_by_name(STUDY)
            assert experiment is not None
            scenario.runs = client.search_runs([experiment.experiment_id], max_results=1000)
            yield scenario
        finally:
            for host in hosts:
                if host.process.poll() is None:
                    host.kill()


def test_the_hosts_that_survive_finish_without_error(hosts: Scenario) -> None:
    for host in hosts.survivors:
        assert host.process.returncode == 0, (host.stdout, host.stderr)
        assert "Traceback" not in host.stderr, host.stderr


def test_exactly_n_trials_finish_across_hosts(hosts: Scenario) -> None:
    finished = [t for t in hosts.trials if t.state in FINISHED]
    assert len(finished) == N_TRIALS, [(t.number, t.state.name) for t in hosts.trials]


def test_no_trial_number_is_taken_twice(hosts: Scenario) -> None:
    numbers = [t.number for t in hosts.trials]
    assert sorted(numbers) == list(range(len(numbers)))
    ran = [number for host in [*hosts.survivors, hosts.victim] for number in host.trial_numbers()]
    assert len(ran) == len(set(ran)), ran
    # A trial the dead host had claimed but not yet started has no folder anywhere; it is
    # failed by heartbeat like the one it was training, or by the next claim if the host died
    # in the middle of claiming it.
    for number in set(numbers) - set(ran):
        trial = hosts.trials[number]
        pid = trial.user_attrs.get("pid")  # none: it died in the middle of its claim
        assert pid is None or pid in hosts.victim.killed_workers, trial.user_attrs
        assert trial.state == optuna.trial.TrialState.FAIL, trial.state
    assert set(ran) <= set(numbers)


def test_every_surviving_host_ran_trials(hosts: Scenario) -> None:
    for host in hosts.survivors:
        assert host.trial_numbers(), host.stdout


def test_hosts_started_at_once_make_one_mlflow_parent_run(hosts: Scenario) -> None:
    [parent] = hosts.parents()
    study = _load_study(hosts.storage)
    assert study is not None
    assert study.user_attrs[PARENT_RUN_ATTR] == parent.info.run_id
    assert parent.info.status == "FINISHED"
    assert all(run.data.tags[PARENT_TAG] == parent.info.run_id for run in hosts.children())


def test_each_finished_trial_has_one_finished_child_run(hosts: Scenario) -> None:
    by_number: dict[int, list[Run]] = {}
    for run in hosts.children():
        by_number.setdefault(int(run.data.tags["trial_number"]), []).append(run)
    for trial in hosts.trials:
        runs = by_number.get(trial.number, [])
        if trial.state in FINISHED:
            assert [run.info.status for run in runs] == ["FINISHED"], trial.number
            assert runs[0].info.run_id == trial.user_attrs["mlflow_run_id"]
    assert not [run for run in hosts.runs if run.info.status == "RUNNING"]


def test_a_dead_hosts_trial_is_failed_by_heartbeat_and_retried_on_another_host(
    hosts: Scenario,
) -> None:
    killed = hosts.trials[hosts.killed_trial]
    assert killed.state == optuna.trial.TrialState.FAIL
    [retry] = [t for t in hosts.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.user_attrs["retry_of"] == killed.number
    assert retry.state in FINISHED
    assert retry.params == killed.params
    assert any(retry.number in host.trial_numbers() for host in hosts.survivors)


def test_a_dead_hosts_mlflow_run_is_closed_killed_saying_why(hosts: Scenario) -> None:
    [run] = [r for r in hosts.children() if r.data.tags["trial_number"] == str(hosts.killed_trial)]
    assert run.info.status == "KILLED"
    assert run.data.tags["trial_state"] == "FAIL"
    assert "stopped sending heartbeats" in run.data.tags["error"]


def test_each_host_shows_the_studys_global_progress(hosts: Scenario) -> None:
    failed = [t for t in hosts.trials if t.state == optuna.trial.TrialState.FAIL]
    assert 1 <= len(failed) <= 2  # the trials of the dead host's pack
    for host in hosts.survivors:
        assert f"study {STUDY}: {N_TRIALS} complete, 0 pruned, {len(failed)} failed" in host.stdout
        assert max(host.shown_finished()) >= len(host.trial_numbers())
    # Whoever finished last saw the other host's trials in its count, not only its own.
    assert any(max(h.shown_finished()) > len(h.trial_numbers()) for h in hosts.survivors)


def test_the_summary_links_to_the_study_on_the_tracking_server(hosts: Scenario) -> None:
    experiment = hosts.server.client().get_experiment_by_name(STUDY)
    assert experiment is not None
    for host in hosts.survivors:
        assert (
            f"browse: {hosts.server.url}/#/experiments/{experiment.experiment_id}/" in host.stdout
        )
        assert "View run" not in host.stdout  # MLflow's own links, printed at each run's end


def test_artifacts_reach_the_servers_artifact_folder_through_the_server(hosts: Scenario) -> None:
    [parent] = hosts.parents()
    client = hosts.server.client()
    assert "best_config.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert list(hosts.server.artifacts.rglob("best_config.yaml"))


# --- bad storage URLs: the three commands run at once (each pays ~10 s of imports) ----------

BAD_STORAGES = {
    "unreachable-host": (f"postgresql://root:{SECRET}@127.0.0.1:1/study", "Connection refused"),
    "unknown-role": (
        f"postgresql://nobody_x:{SECRET}@127.0.0.1:5432/test",
        'role "nobody_x" does not exist',
    ),
    "missing-database": ("", "does not exist"),  # a database name no test creates
}


@pytest.fixture(scope="module")
def bad_storages(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[str, subprocess.CompletedProcess[str]]]:
    started = {}
    for name, (url, _) in BAD_STORAGES.items():
        url = url or postgres_server.url(f"study_missing_{uuid.uuid4().hex[:8]}", SECRET)
        work = tmp_path_factory.mktemp(name)
        command = [
            sys.executable,
            str(RUN),
            "-m",
            "sweep",
            f"sweep.storage={url}",
            f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
            f"hydra.sweep.dir={work / 'sweep'}",
            "sweep.workers=1",
        ]
        started[name] = (url, subprocess.Popen(command, cwd=work, text=True, stdout=-1, stderr=-1))
    results = {}
    for name, (url, process) in started.items():
        stdout, stderr = process.communicate(timeout=180)
        results[name] = (
            url,
            subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr),
        )
    return results


@pytest.mark.parametrize("case", BAD_STORAGES)
def test_a_bad_storage_url_is_one_error_line_with_its_password_masked(
    bad_storages: dict[str, tuple[str, subprocess.CompletedProcess[str]]], case: str
) -> None:
    url, result = bad_storages[case]
    line = one_error_line(result)
    assert SECRET not in result.stdout + result.stderr
    assert url.replace(SECRET, "***") in line
    assert "cannot be used" in line and BAD_STORAGES[case][1] in line, line

"""study.sweep.zygote: workers forked from one preloaded process keep the contract of a worker
started from scratch: stdin commands, the events pipe, a log, a pid to signal, its exit code,
and death with the sweep."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import tiny
from study.paths import CONF_DIR
from study.sweep.devices import DeviceSlot
from study.sweep.pool import EarlyWorkers, Worker, start_worker
from study.sweep.spec import WORKER_MODULE
from study.sweep.zygote import ZYGOTE_MODULE, ForkServer
from study.tracking import Store

SLOT = DeviceSlot(0, None)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    log = tmp_path_factory.mktemp("server") / "fork_server.log"
    server = ForkServer([WORKER_MODULE], dict(os.environ), log)
    yield server
    server.close()


def _worker(server: ForkServer, folder: Path) -> Worker:
    """A worker forked from `server`, waiting for "start" (its spec file never exists)."""
    worker = start_worker(SLOT, folder / "no_spec.json", folder, 1, server)
    assert worker.process.pid != server.process.pid
    return worker


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_worker_is_forked_from_the_server_not_started_anew(
    server: ForkServer, tmp_path: Path
) -> None:
    worker = _worker(server, tmp_path)
    assert _parent_of(worker.process.pid) == server.process.pid
    cmdline = Path(f"/proc/{worker.process.pid}/cmdline").read_bytes().split(b"\0")
    assert ZYGOTE_MODULE.encode() in cmdline  # the server's image: no second interpreter start
    worker.send("stop")
    assert worker.process.wait(timeout=30) == 0


def test_a_worker_that_reads_no_start_exits_0_and_says_nothing(
    server: ForkServer, tmp_path: Path
) -> None:
    worker = _worker(server, tmp_path)
    assert worker.process.poll() is None
    worker.process.stdin.close()  # type: ignore[union-attr]
    assert worker.process.wait(timeout=30) == 0
    assert worker.events.rest() == []


def test_a_killed_worker_reports_the_signal_as_popen_does(
    server: ForkServer, tmp_path: Path
) -> None:
    worker = _worker(server, tmp_path)
    worker.process.kill()
    assert worker.process.wait(timeout=30) == -signal.SIGKILL
    assert worker.events.rest() == []  # its end of the events pipe closed with it


def test_a_worker_that_fails_writes_its_error_to_its_log_and_exits_with_its_code(
    server: ForkServer, tmp_path: Path
) -> None:
    worker = _worker(server, tmp_path)
    worker.send("start")  # it reads the spec, which is not there: one error line, code 2
    assert worker.process.wait(timeout=30) == 2
    [line] = worker.log_path.read_text().splitlines()
    assert line.startswith("error: ") and "no_spec.json" in line


def test_workers_die_with_their_server(tmp_path: Path) -> None:
    server = ForkServer([WORKER_MODULE], dict(os.environ))
    worker = _worker(server, tmp_path)
    os.kill(server.process.pid, signal.SIGKILL)  # the sweep's host process tree going down
    assert worker.process.wait(timeout=30) == -signal.SIGTERM
    assert start_worker(SLOT, tmp_path / "no_spec.json", tmp_path, 1, server).process.poll() in (
        None,
        0,
    )  # no server: a worker of its own, started from scratch
    server.close()


def test_an_unneeded_fork_server_leaves_no_trace(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    with EarlyWorkers([SLOT], sweep_dir, 1, fork_server=True) as early:
        assert early.server is not None and early.waiting == {}
        process = early.server.process
        started = time.monotonic()
    assert process.poll() is not None
    assert time.monotonic() - started < 20  # it was not waited for to finish importing
    assert not sweep_dir.exists()


# What a packed worker does on its first trial, after the fork server's imports: train and
# checkpoint a pack member, and track a run in an MLflow database.
FIRST_TRIAL = """
import importlib, sys
from pathlib import Path
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from study.packed import PACKED, fit_packed
from study.sweep.pool import worker_imports
for name in worker_imports(packed=True):
    importlib.import_module(name)
with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    cfg = compose("train", overrides=sys.argv[4:])
cfg.trainer.engine = PACKED
before = set(sys.modules)
client = MlflowClient(sys.argv[2])
run = client.create_run("0")
from study.data import prepare_data
fit_packed(cfg, Path(sys.argv[3]), prepare_data(cfg))
client.log_metric(run.info.run_id, "val/loss", 0.5)
heavy = ("torch", "mlflow", "optuna", "sqlalchemy", "lightning", "pytorch_lightning")
print(sorted(m for m in set(sys.modules) - before if m.split(".")[0] in heavy))
"""


def test_the_server_preloads_what_a_packed_workers_first_trial_imports(tmp_path: Path) -> None:
    # torch.optim's first optimizer imports torch._dynamo, an MLflow client on a database its
    # SQL store: left out of the preload, every forked worker imported them again (~2 s each).
    store = Store.from_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    store.client()  # the study's store, made by the parent before its workers start
    result = subprocess.run(
        [sys.executable, "-c", FIRST_TRIAL, str(CONF_DIR), store.uri, str(tmp_path), *tiny()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    imported = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    # What is left is a few small modules (the SQLite dialect, torch.save's; ~10 ms), against
    # ~500 (torch._dynamo, SQLAlchemy's ORM, MLflow's SQL store) without the preload.
    assert len(imported) < 50, imported

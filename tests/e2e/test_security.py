"""Security: no password on disk, in MLflow or on the console; a local UI; configs are not code.

The leak checks run the real commands with a password in `tracking.uri` and `sweep.storage` on
the PostgreSQL server at 127.0.0.1:5432 (trust auth: any password connects) and then search
everything they wrote: every file under the test's folder, every param, tag and artifact in
MLflow, every attribute in the Optuna study, stdout and stderr.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from helpers import all_runs, one_error_line, tiny
from study.config import check_stored_config
from study.errors import UserError
from study.paths import database_url
from study.secrets import mask_file
from study.tracking import Store  # noqa: F401  # its settings: no artifact download progress bars

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
PG_HOST = "127.0.0.1:5432"
SECRET = f"s3cret-{uuid.uuid4().hex[:10]}"  # unique: a hit is ours, never a coincidence
WORKER_SPEC = ".worker_spec.json"  # the workers' real URLs, owner-only (docs/security.md)


def _script(name: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / f"{name}.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


# --- where a password could end up ---------------------------------------------------------


def files_holding(root: Path, secret: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Every file (or file name) under `root` that contains `secret`."""
    found = []
    for path in root.rglob("*"):
        readable = path.is_file() and path.name not in skip
        if secret in path.name or (readable and secret.encode() in path.read_bytes()):
            found.append(str(path))
    return found


def mlflow_holding(client: MlflowClient, secret: str, download_to: Path) -> list[str]:
    """Every experiment field, run param, tag or artifact in the store that contains `secret`."""
    found = []
    for experiment in client.search_experiments():
        if secret in f"{experiment.name} {experiment.tags} {experiment.artifact_location}":
            found.append(f"experiment {experiment.name}")
    for run in all_runs(client):
        run_id = run.info.run_id
        for kind, values in (("param", run.data.params), ("tag", run.data.tags)):
            found += [f"{run_id} {kind} {k}" for k, v in values.items() if secret in f"{k}{v}"]
        folder = download_to / run_id
        client.download_artifacts(run_id, "", str(folder))
        found += [f"{run_id} artifact {p}" for p in files_holding(folder, secret)]
    return found


def study_holding(study: optuna.Study, secret: str) -> list[str]:
    found = [f"study {k}" for k, v in study.user_attrs.items() if secret in f"{k}{v}"]
    for trial in study.get_trials(deepcopy=False):
        for kind in ("params", "user_attrs", "system_attrs"):
            if secret in str(getattr(trial, kind)):
                found.append(f"trial {trial.number} {kind}")
    return found


# --- PostgreSQL ----------------------------------------------------------------------------


def _admin_connection():  # type: ignore[no-untyped-def]
    import psycopg2

    errors = []
    for user in ("root", "postgres"):
        try:
            connection = psycopg2.connect(
                host="127.0.0.1", port=5432, user=user, dbname="postgres", connect_timeout=3
            )
        except psycopg2.OperationalError as error:
            errors.append(str(error).strip().splitlines()[0])
            continue
        connection.autocommit = True
        return user, connection
    message = f"PostgreSQL on {PG_HOST} is not reachable: {'; '.join(errors)}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class Postgres:
    user: str
    database: str  # private to this module's tests: MLflow's tables

    def url(self, database: str | None = None) -> str:
        return f"postgresql://{self.user}:{SECRET}@{PG_HOST}/{database or self.database}"


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A database created for these tests and dropped after them; URLs carry SECRET."""
    user, connection = _admin_connection()
    database = f"study_sec_{uuid.uuid4().hex[:12]}"
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{database}"')
    try:
        yield Postgres(user, database)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        connection.close()


def _assert_nothing_holds_the_secret(
    work: Path, results: list[subprocess.CompletedProcess], client: MlflowClient, scratch: Path
) -> None:
    for result in results:
        assert SECRET not in result.stdout + result.stderr, result.stdout + result.stderr
    assert files_holding(work, SECRET, skip=(WORKER_SPEC,)) == []
    assert mlflow_holding(client, SECRET, scratch) == []


# --- a run, its reproduction, a comparison and -m compare, tracked in PostgreSQL ---------------


@dataclass
class Tracked:
    work: Path
    results: list[subprocess.CompletedProcess]
    run_ids: list[str]


@pytest.fixture(scope="module")
def tracked(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Tracked:
    """A run, its reproduction, scripts/compare.py of both, -m compare, and a failing run."""
    work = tmp_path_factory.mktemp("tracked")
    uri = postgres.url()
    trained = _script("run", f"tracking.uri={uri}", *tiny(), cwd=work)
    assert trained.returncode == 0, trained.stderr
    found = re.search(r"^run ([0-9a-f]{32}) ", trained.stdout, re.MULTILINE)
    assert found, trained.stdout
    rerun = _script("reproduce", found.group(1), "--tracking-uri", uri, cwd=work)
    assert rerun.returncode == 0, rerun.stderr
    reproduced = re.search(r"vs reproduction ([0-9a-f]{32})", rerun.stdout)
    assert reproduced, rerun.stdout
    run_ids = [found.group(1), reproduced.group(1)]
    compared = _script("compare", *run_ids, "--tracking-uri", uri, cwd=work)
    assert compared.returncode == 0, compared.stderr
    grid = _script(
        "run",
        "-m",
        "compare",
        f"tracking.uri={uri}",
        "tracking.experiment=compare",
        *tiny(),
        cwd=work,
    )
    assert grid.returncode == 0, grid.stderr
    unreachable = _script(
        "run", f"tracking.uri=postgresql://{postgres.user}:{SECRET}@127.0.0.1:1/x", cwd=work
    )
    return Tracked(work, [trained, rerun, compared, grid, unreachable], run_ids)


@pytest.mark.slow
@pytest.mark.postgres
def test_runs_reproduce_and_compare_keep_the_password_out_of_everything(
    tracked: Tracked, postgres: Postgres, tmp_path: Path
) -> None:
    client = MlflowClient(database_url(postgres.url()))
    assert {run.info.status for run in all_runs(client)} == {"FINISHED"}
    assert len(all_runs(client)) == 2 + 4  # run, reproduction; compare parent and 3 presets
    _assert_nothing_holds_the_secret(tracked.work, tracked.results, client, tmp_path)


@pytest.mark.slow
@pytest.mark.postgres
def test_hydra_still_saves_its_configs_with_the_password_masked(
    tracked: Tracked, postgres: Postgres
) -> None:
    masked = f"tracking.uri={postgres.url().replace(SECRET, '***')}"
    [run_dir] = [
        saved
        for saved in tracked.work.glob("outputs/*/*/.hydra")
        if masked in yaml.safe_load((saved / "overrides.yaml").read_text())
    ]
    config = OmegaConf.load(run_dir / "config.yaml")
    assert config.tracking.uri == postgres.url().replace(SECRET, "***")
    assert masked in (run_dir / "hydra.yaml").read_text()
    [grid] = tracked.work.glob("multirun/*/*/multirun.yaml")
    assert masked in grid.read_text()
    assert len(list(grid.parent.glob("*/.hydra/overrides.yaml"))) == 3


@pytest.mark.slow
@pytest.mark.postgres
def test_the_logged_tracking_uri_shows_user_and_host_but_not_the_password(
    tracked: Tracked, postgres: Postgres, tmp_path: Path
) -> None:
    client = MlflowClient(database_url(postgres.url()))
    logged = client.download_artifacts(tracked.run_ids[0], "config.yaml", str(tmp_path))
    config = OmegaConf.load(logged)  # the run's config: what reproduce reads back
    assert config.tracking.uri == postgres.url().replace(SECRET, "***")


@pytest.mark.slow
@pytest.mark.postgres
def test_an_unreachable_database_is_one_line_with_its_password_masked(tracked: Tracked) -> None:
    line = one_error_line(tracked.results[-1])
    assert ":***@127.0.0.1:1/x" in line and "cannot be reached" in line


# --- a sweep with both URLs in PostgreSQL --------------------------------------------------


@pytest.mark.slow
@pytest.mark.postgres
def test_a_sweep_keeps_the_password_out_of_everything_but_the_owner_only_worker_spec(
    postgres: Postgres, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    study_name = f"sec_{uuid.uuid4().hex[:12]}"
    storage = postgres.url("test")  # Optuna's tables live in the shared database `test`
    result = _script(
        "run",
        "-m",
        "sweep",
        f"tracking.uri={postgres.url()}",
        f"sweep.storage={storage}",
        f"sweep.study_name={study_name}",
        "sweep.n_trials=2",
        "sweep.workers=2",
        *tiny(),
        cwd=work,
    )
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"storage {storage.replace(SECRET, '***')}" in result.stdout
        study = optuna.load_study(study_name=study_name, storage=database_url(storage))
        assert len(study.get_trials()) == 2
        assert study_holding(study, SECRET) == []
        client = MlflowClient(database_url(postgres.url()))
        _assert_nothing_holds_the_secret(work, [result], client, tmp_path / "artifacts")
        spec = work / "multirun" / study_name / WORKER_SPEC
        assert spec.stat().st_mode & 0o777 == 0o600
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=study_name, storage=database_url(storage))


# --- the MLflow UI -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))  # four little-endian words
    return socket.inet_ntop(socket.AF_INET6, words)


def listening_addresses(port: int) -> list[str]:
    """The local addresses of the sockets listening on `port`, from /proc/net/tcp{,6}."""
    addresses = []
    for table in ("tcp", "tcp6"):
        path = Path("/proc/net") / table
        lines = path.read_text().splitlines()[1:] if path.exists() else []
        for line in lines:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                addresses.append(_address(address))
    return addresses


def session_command_lines(session: int, but: int) -> list[str]:
    """The command lines of the processes in `session` except `but` (what the UI started)."""
    lines = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == but:
            continue
        try:
            stat = (proc / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[3]) == session:
                lines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError, ValueError):
            continue  # it ended meanwhile
    return lines


@dataclass
class UI:
    process: subprocess.Popen[str]
    port: int
    output: list[str]

    @property
    def link(self) -> str:
        """The first link ui.py printed (the newest experiment's runs, or the experiments)."""
        return next(line for line in self.output if LINK.match(line)).rsplit(" ", 1)[1]


LINK = re.compile(r"^(runs of .*|no runs yet; experiments): http")


@contextlib.contextmanager
def ui(*args: str, cwd: Path, timeout_s: float = 120) -> Iterator[UI]:
    """scripts/ui.py on a free port, until it prints its runs link; stopped like Ctrl-C."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "ui.py"), "--port", str(port), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its own process group: the server it starts goes with it
    )
    assert process.stdout is not None
    started = UI(process, port, [])
    try:
        deadline = time.monotonic() + timeout_s
        pending = ""  # raw reads: a text readline would buffer lines the selector never sees
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while not any(LINK.match(line) for line in started.output):
                assert time.monotonic() < deadline, started.output
                assert process.poll() is None, started.output
                if selector.select(timeout=1):
                    pending += os.read(process.stdout.fileno(), 65536).decode()
                    *lines, pending = pending.split("\n")
                    started.output += lines
        yield started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            rest, _ = process.communicate(timeout=30)
            started.output += rest.splitlines()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.slow
def test_ui_binds_127_0_0_1_says_so_and_links_the_model_training_view(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(store)
    client.set_terminated(client.create_run(client.create_experiment("lecture")).info.run_id)
    with ui("--tracking-uri", store, cwd=tmp_path) as server:
        assert re.fullmatch(
            rf"http://127\.0\.0\.1:{server.port}/#/experiments/\d+/runs"
            r"\?workflowType=machine_learning",
            server.link,
        ), server.link
        assert "bound to 127.0.0.1 (this machine only" in "\n".join(server.output)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=10) as r:
            assert r.status == 200
        assert set(listening_addresses(server.port)) == {"127.0.0.1"}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--port", "70000"], "'70000' is not a TCP port"),
        (["--tracking-uri", "sqlite:///{tmp}/typo/mlflow.db"], "no MLflow store at"),
        (["--port", "{busy}"], "cannot listen on 127.0.0.1"),
    ],
    ids=["port-out-of-range", "store-missing", "port-busy"],
)
def test_ui_refuses_bad_input_in_one_line(
    args: list[str], says: str, tmp_path: Path, run_script: Callable[..., Any]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        filled = [arg.format(tmp=tmp_path, busy=port) for arg in args]
        store = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
        MlflowClient(store[1]).search_experiments()  # the store exists: only `args` is wrong
        line = one_error_line(run_script("ui", *store, *filled, timeout=60))
    assert says in line, line
    assert not (tmp_path / "typo").exists()  # no empty store made for a typo


@pytest.mark.slow
@pytest.mark.postgres
def test_ui_on_a_database_store_keeps_its_password_off_command_lines_and_output(
    postgres: Postgres, tmp_path: Path
) -> None:
    with ui("--tracking-uri", postgres.url(), cwd=tmp_path) as server:
        # The user typed the URL on ui.py's command line; any process it starts must not
        # repeat it there (any user of the machine can list command lines).
        started = session_command_lines(server.process.pid, but=server.process.pid)
        assert not [line for line in started if SECRET in line]
    assert SECRET not in "\n".join(server.output)
    assert files_holding(tmp_path, SECRET) == []


# --- configs are data, never code ----------------------------------------------------------


@dataclass
class Logged:
    work: Path
    uri: str
    run_id: str
    config: Path  # the run's config.yaml artifact, on disk


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Logged:
    work = tmp_path_factory.mktemp("logged")
    uri = f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"
    trained = _script("run", f"tracking.uri={uri}", *tiny(), cwd=work)
    assert trained.returncode == 0, trained.stderr
    found = re.search(r"^run ([0-9a-f]{32}) ", trained.stdout, re.MULTILINE)
    assert found, trained.stdout
    artifacts = MlflowClient(uri).get_run(found.group(1)).info.artifact_uri
    config = Path(artifacts.removeprefix("file://")) / "config.yaml"
    assert config.is_file(), artifacts
    return Logged(work, uri, found.group(1), config)


# key in the logged config -> what someone with write access to the store puts there
TAMPERED = {
    "os-system": ("data", {"_target_": "os.system", "command": "touch MARKER"}),
    "via-a-trusted-module": (
        "optimizer",
        {"_target_": "study.data.os.system", "_args_": ["touch MARKER"]},
    ),
    "env-interpolation": ("seed", "${oc.env:HOME}"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(TAMPERED))
def test_reproduce_refuses_an_edited_config_naming_untrusted_code(
    logged: Logged, case: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    key, value = TAMPERED[case]
    original = logged.config.read_text()
    cfg = yaml.safe_load(original)
    cfg[key] = yaml.safe_load(yaml.safe_dump(value).replace("MARKER", str(marker)))
    try:
        logged.config.write_text(yaml.safe_dump(cfg))
        result = _script("reproduce", logged.run_id, "--tracking-uri", logged.uri, cwd=tmp_path)
    finally:
        logged.config.write_text(original)
    line = one_error_line(result)
    assert f"run {logged.run_id}'s config.yaml: {key}" in line, line
    assert not marker.exists()
    assert [run.info.run_id for run in all_runs(MlflowClient(logged.uri))] == [logged.run_id]


@pytest.mark.parametrize(
    "cfg",
    [
        {"data": {"_target_": "os.system"}},
        {"model": {"_target_": "builtins.eval"}},
        {"model": {"net": {"_target_": "subprocess.Popen"}}},  # nested
        {"optimizer": {"_target_": "study.data.Path"}},  # a class study.data imports
        {"optimizer": {"_target_": "torch.optim.lr_scheduler.StepLR"}},  # a submodule
        {"data": {"_target_": "study.data._private"}},
        {"data": {"_target_": ["study.data.CsvData"]}},
        {"data": {"items": [{"_target_": "os.system"}]}},  # inside a list
        {"data": {"path": "${oc.env:HOME}"}},
    ],
)
def test_a_stored_config_naming_anything_outside_the_trusted_classes_is_refused(cfg: dict) -> None:
    with pytest.raises(UserError, match="edited after it was logged"):
        check_stored_config(OmegaConf.create(cfg), "run x's config.yaml")


def test_every_class_conf_names_is_trusted() -> None:
    targets = {
        line.split(":", 1)[1].split("#")[0].strip()
        for path in (ROOT / "conf").rglob("*.yaml")
        if path.parent.name in ("data", "model", "optimizer")
        for line in path.read_text().splitlines()
        if line.startswith("_target_:")
    }
    assert len(targets) >= 8
    check_stored_config(
        OmegaConf.create({f"k{i}": {"_target_": target} for i, target in enumerate(targets)}), "x"
    )


UNSAFE = {
    "torch.load without weights_only=True": re.compile(r"torch\.load\((?![^)]*weights_only=True)"),
    "pickle": re.compile(r"\b(c?pickle|dill|joblib)\b|read_pickle|allow_pickle=True"),
    "yaml.load": re.compile(r"yaml\.(unsafe_)?load\(|yaml\.Loader\b|FullLoader"),
    "eval/exec": re.compile(r"(?<![\w.])(eval|exec)\("),
}


@pytest.mark.parametrize("kind", list(UNSAFE))
def test_no_loader_in_the_code_can_run_what_it_reads(kind: str) -> None:
    sources = [*(ROOT / "src").rglob("*.py"), *(ROOT / "scripts").glob("*.py")]
    hits = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sources
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if UNSAFE[kind].search(line)
    ]
    assert hits == []


def test_mask_file_masks_passwords_and_leaves_other_files_alone(tmp_path: Path) -> None:
    holding, clean = tmp_path / "overrides.yaml", tmp_path / "config.yaml"
    holding.write_text("- sweep.storage=postgresql://u:pw@db/x\n- seed=1\n")
    clean.write_text("seed: 1\n")
    before = clean.stat().st_mtime_ns
    mask_file(holding)
    mask_file(clean)
    mask_file(tmp_path / "absent.yaml")
    assert holding.read_text() == "- sweep.storage=postgresql://u:***@db/x\n- seed=1\n"
    assert clean.stat().st_mtime_ns == before

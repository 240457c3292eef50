"""The MLflow UI on our store (scripts/ui.py), and the `mlflow server` command tests start.

scripts/ui.py serves MLflow's own ASGI app in this process (uvicorn, one worker, no job
runner): one Python start instead of three (mlflow CLI, uvicorn, and our script), a console
that shows only the links and errors, and Ctrl-C, SIGTERM and SIGHUP stop everything at once.
The one change to MLflow's UI: the page that loads the app (GET /) first sets the browser's
view mode to model training, so no click lands in MLflow 3's GenAI view (README: Browse).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from study.errors import UserError
from study.runs_table import DEFAULT_STATE, OUTCOME_COLUMNS, saved_states
from study.secrets import redact
from study.tracking import Store, runs_url

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TRAINING_VIEW = "machine_learning"
# MLflow 3.17's bundled UI takes its view from the URL's `workflowType`, else from a localStorage
# entry, else GenAI. Links inside the app drop `workflowType`, so the entry is what keeps every
# click in the training view. Its useLocalStorage hook stores `${key}_v${version}`, JSON-encoded.
VIEW_STORAGE_KEY = "mlflow.workflowType_v1"
# Set on every page load: the training view, even after a visit to another MLflow server here.
FORCED = {VIEW_STORAGE_KEY: TRAINING_VIEW}
# Set once, when absent (the user's later choice stands): no AI assistant panel opening itself
# over a third of the screen on the first visit.
DEFAULTS = {"mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True}


RUNS_TABLE_COLUMNS = OUTCOME_COLUMNS
RUNS_TABLE_STATE = DEFAULT_STATE
# MLflow keeps each experiment's table settings in a localStorage entry whose scope is the JSON
# list of the page's experiment ids.
RUNS_TABLE_KEY = r"^MLflowLocalStorage-[0-9.]+-ExperimentPage-(.*)-ReactComponentState$"

# Experiment ids are not known before the app runs, so the table's entry is not written: while
# an experiment has none, reading it returns the experiment's stored settings (a study's: its
# parameters, its parent expanded; study.runs_table) or ours, and the user's
# first change writes theirs.
_SEED_JS = """<script>(function (forced, defaults, tableKey, tableState, tables) {
  try {
    for (const [key, value] of Object.entries(forced)) localStorage.setItem(key, value);
    for (const [key, value] of Object.entries(defaults))
      if (localStorage.getItem(key) === null) localStorage.setItem(key, value);
    const storage = window.localStorage, getItem = Storage.prototype.getItem;
    const table = new RegExp(tableKey);
    Storage.prototype.getItem = function (key) {
      const value = getItem.call(this, key);
      const match = value === null && this === storage ? table.exec(key) : null;
      if (!match) return value;
      try {
        const ids = JSON.parse(match[1]);
        if (ids.length === 1 && tables[ids[0]]) return tables[ids[0]];
      } catch (e) {}
      return tableState;
    };
  } catch (e) {}
})(%s, %s, %s, %s, %s)</script>"""


def _script_json(value: Any) -> str:
    """`value` as a JavaScript literal that cannot close the <script> element."""
    return json.dumps(value).replace("</", "<\\/")


def seed_script(
    forced: dict[str, Any],
    defaults: dict[str, Any],
    table_state: dict[str, Any] = RUNS_TABLE_STATE,
    tables: dict[str, str] | None = None,
) -> bytes:
    """An inline <script> writing these localStorage entries before the app reads them, and
    giving each experiment's runs table its settings in `tables` (JSON by experiment id), else
    `table_state`, until the user changes it."""

    def stored(entries: dict[str, Any]) -> str:
        return _script_json({key: json.dumps(value) for key, value in entries.items()})

    arguments = (stored(forced), stored(defaults), _script_json(RUNS_TABLE_KEY))
    table = _script_json(json.dumps(table_state))
    return (_SEED_JS % (*arguments, table, _script_json(tables or {}))).encode()


SEED_SCRIPT = seed_script(FORCED, DEFAULTS)
# Revalidation headers: a browser that cached the page from a plain `mlflow server` on the same
# port would otherwise get 304 and reuse the page without the script.
_CACHE_HEADERS = {b"content-length", b"etag", b"last-modified", b"cache-control", b"expires"}
_CONDITIONAL_HEADERS = {b"if-none-match", b"if-modified-since"}


# --- the page that loads the app ------------------------------------------------------------


def seed_training_view(page: bytes, script: bytes = SEED_SCRIPT) -> bytes:
    """The UI's index.html with the view mode set before the app's scripts run."""
    head = page.find(b"<head>")
    at = head + len(b"<head>") if head >= 0 else 0
    return page[:at] + script + page[at:]


class TrainingView:
    """ASGI middleware: GET / (the page every UI URL loads) gets seed_training_view, with the
    experiments' stored table settings as they are at that load (`tables`).

    The request still goes through MLflow's app, so its host checks and security headers
    apply; only the body, its length and its cache headers change.
    """

    def __init__(
        self,
        app: ASGIApp,
        page_path: str = "/",
        tables: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self.app = app
        self.page_path = page_path
        self.tables = tables

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != self.page_path:
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _CONDITIONAL_HEADERS]
        start: Message = {}
        chunks: list[bytes] = []

        async def send_seeded(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)  # held back: the length changes
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            await _send_page(send, start, b"".join(chunks), self._script())

        await self.app({**scope, "headers": headers}, receive, send_seeded)

    def _script(self) -> bytes:
        if self.tables is None:
            return SEED_SCRIPT
        try:
            tables = self.tables()
        except Exception:  # the store is busy or gone: the page still opens, unseeded tables
            tables = {}
        return seed_script(FORCED, DEFAULTS, tables=tables)


async def _send_page(send: Send, start: Message, body: bytes, script: bytes) -> None:
    response_headers = [(k, v) for k, v in start["headers"] if k.lower() not in _CACHE_HEADERS]
    if start["status"] == 200 and (b"content-type", b"text/html; charset=utf-8") in [
        (k.lower(), v.lower()) for k, v in start["headers"]
    ]:
        body = seed_training_view(body, script)
    response_headers += [
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-cache"),
    ]
    await send({**start, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})


# --- which experiments to open ----------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    name: str
    url: str


def newest_first(client: MlflowClient) -> list[tuple[str, str]]:
    """(id, name) of each experiment that holds runs, the one with the most recent run first."""
    latest: list[tuple[int, str, str]] = []
    for experiment in client.search_experiments():
        runs = client.search_runs(
            [experiment.experiment_id], max_results=1, order_by=["attributes.start_time DESC"]
        )
        if runs:
            started = runs[0].info.start_time or 0
            latest.append((started, experiment.experiment_id, experiment.name))
    return [(id_, name) for _, id_, name in sorted(latest, reverse=True)]


def experiment_links(client: MlflowClient, url: str, experiment: str | None) -> list[Link]:
    """The runs table of `experiment`, else of every experiment with runs, newest first."""
    if experiment is None:
        return [Link(name, runs_url(url, id_)) for id_, name in newest_first(client)]
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise UserError(f"no experiment {experiment!r} in this store (it has: {names})")
    return [Link(found.name, runs_url(url, found.experiment_id))]


def link_lines(links: list[Link], url: str) -> list[str]:
    if not links:
        return [f"no runs yet; experiments: {url}/#/experiments?workflowType={TRAINING_VIEW}"]
    return [f"runs of {link.name}: {link.url}" for link in links]


# --- serving --------------------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything slow starts: a busy port fails at once."""
    try:
        [(family, kind, proto, _, address), *_] = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )
    except socket.gaierror as error:
        raise UserError(f"--host {host!r} is not an address of this machine: {error}") from error
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port}: {error.strerror} (another server? try --port)"
        ) from error
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def server_settings(store: Store, artifacts: str | None) -> dict[str, str]:
    """What `mlflow server` passes its app in the environment, for our store."""
    from mlflow.server import constants

    if store.artifact_root is not None:
        artifact_root = (store.artifact_root / "artifacts").as_uri()
    else:
        artifact_root = "mlflow-artifacts:/"  # proxied: hosts upload through the server
    settings = {
        constants.BACKEND_STORE_URI_ENV_VAR: store.uri,
        constants.REGISTRY_STORE_URI_ENV_VAR: store.uri,
        constants.ARTIFACT_ROOT_ENV_VAR: artifact_root,
        constants.SERVE_ARTIFACTS_ENV_VAR: "true",
        "_MLFLOW_SGI_NAME": "uvicorn",
        "_MLFLOW_SERVER_BOOT_ID": uuid.uuid4().hex,
        "MLFLOW_ENABLE_WORKSPACES": "false",
    }
    if artifacts is not None:
        settings[constants.ARTIFACTS_DESTINATION_ENV_VAR] = artifacts
    return settings


def quiet() -> None:
    """Links and errors only: no access log, INFO lines or deprecation notices of libraries."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"starlette\.middleware\.wsgi is deprecated")
    for name in ("mlflow", "alembic", "sqlalchemy", "huey"):
        logging.getLogger(name).setLevel(logging.WARNING)


def mlflow_app(store: Store, artifacts: str | None) -> ASGIApp:
    """MLflow's server app on `store`, with the training view seeded."""
    settings = server_settings(store, artifacts)
    os.environ.update(server_env(store))
    os.environ.update(settings)
    quiet()
    import uvicorn  # noqa: F401  # before mlflow.server: it turns its security checks on then
    from mlflow.server.constants import ARTIFACT_ROOT_ENV_VAR
    from mlflow.server.fastapi_app import app
    from mlflow.server.handlers import initialize_backend_stores

    quiet()  # importing MLflow's server resets its loggers
    initialize_backend_stores(store.uri, store.uri, settings[ARTIFACT_ROOT_ENV_VAR])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store.uri)
    return TrainingView(app, tables=lambda: saved_states(client))


def run_server(app: ASGIApp, sock: socket.socket, on_start: Callable[[], None]) -> None:
    """Serve until Ctrl-C, SIGTERM or SIGHUP; `on_start` once it answers."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                on_start()

    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=3, lifespan="on"
    )
    server = Server(config)
    # uvicorn handles SIGINT and SIGTERM; a closed terminal (SIGHUP) stops it as SIGTERM does.
    signal.signal(signal.SIGHUP, lambda _, frame: server.handle_exit(signal.SIGTERM, frame))
    gc.freeze()  # what the start loaded lives until exit: no 1-2 s of collecting it at Ctrl-C
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled
        server.run(sockets=[sock])


def this_machine() -> str:
    """This machine's address on its network (the one it reaches others from), or its name
    where it has no network. An address, not the name: MLflow's server answers requests
    addressed to a private IP, but to a name only when --allowed-hosts lists it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.254.254.254", 1))  # UDP: picks the route, sends nothing
            return str(probe.getsockname()[0])
        except OSError:
            return socket.gethostname()


WILDCARDS = ("0.0.0.0", "::")
ALLOWED_HOSTS_ENV = "MLFLOW_SERVER_ALLOWED_HOSTS"
ALLOWED_ORIGINS_ENV = "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"


def served_names(port: int) -> list[str]:
    """The host:port names a server bound to every interface is reached by: those the user
    allowed (MLFLOW_SERVER_ALLOWED_HOSTS, patterns left out), else this machine's address."""
    allowed = os.environ.get(ALLOWED_HOSTS_ENV, "").split(",")
    names = [name.strip() for name in allowed if name.strip() and "*" not in name]
    if not names:
        names = [this_machine()]
    return list(dict.fromkeys(name if ":" in name else f"{name}:{port}" for name in names))


def browse_url(host: str, port: int) -> str:
    """The address to open for a server bound to `host`: a wildcard (0.0.0.0, ::) listens on
    every interface, but a link to it opens nothing on another machine."""
    if host in WILDCARDS:
        return f"http://{served_names(port)[0]}"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def allow_served_names(port: int) -> None:
    """Let MLflow's server answer a browser at the names it is reached by (served_names).

    Its host check accepts localhost and RFC 1918 addresses by default, and its origin check
    refuses the UI's own POSTs (its runs search) from any origin but localhost. So this
    machine's address joins the allowed hosts unless the user chose them, and the served names
    become the allowed origins unless the user chose those. Both checks guard against DNS
    rebinding and other sites' scripts; the server's own names and origins open neither.
    """
    from mlflow.server.security_utils import get_default_allowed_hosts

    names = served_names(port)
    if not os.environ.get(ALLOWED_HOSTS_ENV):
        os.environ[ALLOWED_HOSTS_ENV] = ",".join([*get_default_allowed_hosts(), *names])
    if not os.environ.get(ALLOWED_ORIGINS_ENV):
        os.environ[ALLOWED_ORIGINS_ENV] = ",".join(f"http://{name}" for name in names)


def serve_ui(
    store: Store,
    host: str = "127.0.0.1",
    port: int = 5000,
    experiment: str | None = None,
    artifacts: str | None = None,
) -> int:
    """Run the UI until stopped; print the links to the runs tables once it answers."""
    store.must_exist(
        "run `python scripts/run.py` (or a sweep) first, or pass --tracking-uri "
        "sqlite:///path/to/mlflow.db"
    )
    sock = bind(host, port)
    url = browse_url(host, port)
    lines = link_lines(experiment_links(store.client(), url, experiment), url)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: binding {host}: anyone who can reach this machine can read and "
            "change your runs (the MLflow UI has no login)",
            file=sys.stderr,
        )
    else:
        lines.insert(0, f"MLflow UI bound to {host} (this machine only; --host to change)")
    if host in WILDCARDS:
        allow_served_names(port)
    app = mlflow_app(store, artifacts)
    run_server(app, sock, lambda: print("\n".join(lines), flush=True))
    return 0


# --- `mlflow server` as a separate process (tests, scripted set-ups) ------------------------


def server_command(store: Store, host: str, port: int, artifacts: str | None = None) -> list[str]:
    """`mlflow server` on the store: one worker and no job runner start it in seconds, not 20.

    On a database store (PostgreSQL: many machines) the server keeps the artifacts in
    `artifacts` (a folder or a bucket URI) and proxies them: hosts upload through it and
    need no shared folder.
    """
    mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    command = [mlflow, "server", "--host", host, "--port", str(port), "--workers", "1"]
    if redact(store.uri) == store.uri:  # else server_env(store) passes it: `ps` shows argv to all
        command += ["--backend-store-uri", store.uri]
    if store.artifact_root is not None:
        command += ["--default-artifact-root", (store.artifact_root / "artifacts").as_uri()]
    elif artifacts is not None:
        command += ["--artifacts-destination", artifacts]
    return command


def server_env(store: Store | None = None) -> dict[str, str]:
    """The server's environment; it carries the store's URI, which may hold a password."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # One worker needs few database connections; the default pool (5 + 10) crowds a shared
    # PostgreSQL that every sweep host also connects to.
    env.setdefault("MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", "2")
    env.setdefault("MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW", "3")
    if store is not None:
        env["MLFLOW_BACKEND_STORE_URI"] = store.uri
    return env


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(
                f"the MLflow server exited with code {process.returncode}: "
                "is the port already in use? try --port"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.25)
    raise UserError(f"the MLflow server did not answer at {url} within {timeout_s:.0f} s")

"""The MLflow UI on our store (scripts/ui.py): served in this process, with its links.

scripts/ui.py serves MLflow's own ASGI app in this process (uvicorn, one worker, no job
runner): one Python start instead of three (mlflow CLI, uvicorn, and our script), a console
that shows only the links and errors, and Ctrl-C, SIGTERM and SIGHUP stop everything at once.
The one change to MLflow's UI: the page that loads the app (GET /) first sets the browser's
view mode to model training, so no click lands in MLflow 3's GenAI view (docs/ui.md).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from study.errors import UserError
from study.tracking import Store, runs_url
from study.ui.view import TRAINING_VIEW, ASGIApp, TrainingView, saved_states

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

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

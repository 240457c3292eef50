"""What the MLflow UI shows first: the model-training view on every page, and the runs table of
each experiment as it should open.

The view: the page that loads the app (GET /) first sets the browser's view mode to model
training, so no click lands in MLflow 3's GenAI view (docs/ui.md).

The runs table: which columns, which rows expanded. MLflow 3.17's UI keeps an experiment's table
settings in the browser's localStorage (one JSON entry per experiment: `selectedColumns`,
`runsExpanded`, ...) and its sort in the URL (`orderByKey`, `orderByAsc`). A study stores the
settings it should open with as an experiment tag; scripts/ui.py hands them to the browser until
the user changes the table (TrainingView). Children nest under their parent only while the table
is sorted by creation time (mlflow#15802), so the study's table keeps that sort and opens its
parent expanded: the trials stay nested, in order. The best are one link away, in the parent's
description: the table sorted by best_val_loss (flat, best first), whose first page of 100 runs
holds the 100 best. (`runsPinned` in the stored settings pins nothing in 3.17.2: checked in
Chromium.)
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from mlflow.tracking import MlflowClient

TABLE_TAG = "study.runs_table"  # an experiment's initial table settings, as JSON
# What any experiment's table shows until the user picks columns: the outcome of each run. The
# marker series (study.markers) are left out: their latest value means nothing in a table.
OUTCOME_COLUMNS = [
    "metrics.`best_val_loss`",
    "metrics.`best_epoch`",
    "metrics.`stopped_epoch`",
    "tags.`fit`",
    "tags.`trial_state`",
]
DEFAULT_STATE: dict[str, Any] = {"selectedColumns": OUTCOME_COLUMNS}
_MAX_TAG = 5000  # MLflow's limit on an experiment tag's value


def study_state(params: Iterable[str], parent_run_id: str) -> dict[str, Any]:
    """A study's table: its searched parameters beside the outcome columns, the parent run
    expanded (its trials nested in order)."""
    columns = [f"params.`{name}`" for name in params]
    return {
        "selectedColumns": [*columns, *OUTCOME_COLUMNS],
        "runsExpanded": {parent_run_id: True},
    }


def save_state(client: MlflowClient, experiment_id: str, state: Mapping[str, Any]) -> None:
    """Store the table's settings on the experiment; too many columns for a tag: the outcome
    columns and as many parameters as fit."""
    value = json.dumps(state)
    while len(value) > _MAX_TAG and len(state["selectedColumns"]) > len(OUTCOME_COLUMNS):
        state = {**state, "selectedColumns": state["selectedColumns"][1:]}
        value = json.dumps(state)
    client.set_experiment_tag(experiment_id, TABLE_TAG, value)


def saved_states(client: MlflowClient) -> dict[str, str]:
    """Each experiment's stored table settings (JSON) by experiment id."""
    return {
        experiment.experiment_id: experiment.tags[TABLE_TAG]
        for experiment in client.search_experiments(max_results=1000)
        if TABLE_TAG in experiment.tags
    }


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

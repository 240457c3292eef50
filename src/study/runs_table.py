"""How the MLflow UI's runs table of an experiment opens: which columns, which rows expanded.

MLflow 3.17's UI keeps an experiment's table settings in the browser's localStorage (one JSON
entry per experiment: `selectedColumns`, `runsExpanded`, ...) and its sort in the
URL (`orderByKey`, `orderByAsc`). A study stores the settings it should open with as an
experiment tag; scripts/ui.py hands them to the browser until the user changes the table
(study.ui). Children nest under their parent only while the table is sorted by creation time
(mlflow#15802), so the study's table keeps that sort and opens its parent expanded: the trials
stay nested, in order. The best are one link away, in the parent's description: the table
sorted by best_val_loss (flat, best first), whose first page of 100 runs holds the 100 best.
(`runsPinned` in the stored settings pins nothing in 3.17.2: checked in Chromium.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
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

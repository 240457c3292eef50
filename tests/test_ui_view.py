"""study.ui.view: the settings a study's runs table opens with, kept on its experiment."""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from study.ui import (
    OUTCOME_COLUMNS,
    TABLE_TAG,
    save_state,
    saved_states,
    study_state,
)


def test_a_studys_table_shows_its_parameters_first_and_its_parent_expanded() -> None:
    state = study_state(["optimizer.lr", "model.dropout"], "parent")
    assert state["selectedColumns"] == [
        "params.`optimizer.lr`",
        "params.`model.dropout`",
        *OUTCOME_COLUMNS,
    ]
    assert state["runsExpanded"] == {"parent": True}  # its trials nested, in order


def test_no_marker_series_among_the_columns() -> None:
    assert not [column for column in OUTCOME_COLUMNS if "marker/" in column]


def test_the_state_is_kept_on_the_experiment_and_read_back_by_id(
    mlflow_client: MlflowClient,
) -> None:
    experiment = mlflow_client.create_experiment("told")
    mlflow_client.create_experiment("plain")
    state = study_state(["optimizer.lr"], "parent")
    save_state(mlflow_client, experiment, state)
    assert {key: json.loads(value) for key, value in saved_states(mlflow_client).items()} == {
        experiment: state
    }


def test_too_many_parameters_for_a_tag_keep_the_outcome_columns(
    mlflow_client: MlflowClient,
) -> None:
    experiment = mlflow_client.create_experiment("wide")
    state = study_state([f"p{i:03d}.{'x' * 40}" for i in range(200)], "parent")
    save_state(mlflow_client, experiment, state)
    stored = json.loads(mlflow_client.get_experiment(experiment).tags[TABLE_TAG])
    assert stored["selectedColumns"][-len(OUTCOME_COLUMNS) :] == OUTCOME_COLUMNS
    assert len(json.dumps(stored)) <= 5000

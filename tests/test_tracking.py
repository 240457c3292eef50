"""MLflow tracking: the store, experiments, run status, redaction, params, buffered metrics."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from helpers import PostgresServer, all_runs
from study.errors import UserError
from study.paths import database_url
from study.secrets import redact
from study.tracking import (
    Store,
    clean_number,
    flatten,
    metric_chart_url,
    run_params,
    runs_url,
    tracked_run,
)

ROOT = Path(__file__).resolve().parents[1]


# --- the store -----------------------------------------------------------------------------


@pytest.mark.parametrize("uri", [None, ""])
def test_default_store_is_sqlite_under_the_project_mlruns(
    uri: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # wherever the command runs from
    store = Store.from_uri(uri)
    assert store.uri == f"sqlite:///{ROOT / 'mlruns' / 'mlflow.db'}"
    assert store.artifact_root == ROOT / "mlruns"


def test_mlflow_tracking_uri_chooses_the_store_when_tracking_uri_is_null(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    assert Store.from_uri(None).uri == f"sqlite:///{tmp_path.resolve() / 'env.db'}"
    given = f"sqlite:///{tmp_path / 'config.db'}"
    assert Store.from_uri(given).uri == f"sqlite:///{tmp_path.resolve() / 'config.db'}"


def test_an_unusable_mlflow_tracking_uri_is_a_user_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/mlruns")
    with pytest.raises(UserError, match=r"^MLFLOW_TRACKING_URI='file:///tmp/mlruns' is not"):
        Store.from_uri(None)


def test_relative_sqlite_uri_resolves_to_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = Store.from_uri("sqlite:///runs/here.db")
    assert store.uri == f"sqlite:///{tmp_path.resolve() / 'runs' / 'here.db'}"
    assert store.artifact_root == tmp_path.resolve() / "runs"


def test_sqlite_uri_expands_the_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    store = Store.from_uri("sqlite:///~/mlflow.db")
    assert store.uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


@pytest.mark.parametrize(
    "uri",
    ["http://127.0.0.1:5000", "https://mlflow.example.com", "postgresql+psycopg2://u:p@db/mlflow"],
)
def test_server_and_database_uris_are_kept_with_no_local_artifact_folder(uri: str) -> None:
    store = Store.from_uri(uri)
    assert store.uri == uri
    assert store.artifact_root is None


@pytest.mark.parametrize("uri", ["ftp://host/mlruns", "file:///tmp/mlruns", "./mlruns"])
def test_unusable_uri_is_a_user_error_naming_tracking_uri(uri: str) -> None:
    with pytest.raises(UserError, match=r"tracking\.uri"):
        Store.from_uri(uri)


def test_unusable_uri_error_does_not_show_the_password() -> None:
    with pytest.raises(UserError) as caught:
        Store.from_uri("ftp://alice:hunter2@host/mlruns")
    assert "hunter2" not in str(caught.value)


# A process that opens a store, waits at the start line (the file `go`) and makes a run.
_OPEN_AND_RUN = """
import sys, time
from pathlib import Path
from study.tracking import Store
uri, go = sys.argv[1], Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
store = Store.from_uri(uri)
client = store.client()
run = client.create_run(store.experiment_id(client, "side-by-side"))
client.set_terminated(run.info.run_id)
"""


def _open_side_by_side(uri: str, go: Path, processes: int = 3) -> None:
    """`processes` processes, started together once imported, open the store `uri` and make a
    run each; every one must succeed."""
    started = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_AND_RUN, uri, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(processes)
    ]
    for process in started:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
    go.touch()
    outputs = [process.communicate(timeout=120)[0] for process in started]
    assert [process.returncode for process in started] == [0] * processes, outputs
    runs = all_runs(MlflowClient(database_url(uri)))
    assert [run.info.status for run in runs] == ["FINISHED"] * processes


@pytest.mark.slow
def test_processes_opening_a_new_sqlite_store_at_once_take_turns(tmp_path: Path) -> None:
    # Unlocked, MLflow's migrations break each other's: 6 of 9 processes failed here.
    _open_side_by_side(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "go")


@pytest.mark.slow
@pytest.mark.postgres
def test_hosts_opening_a_new_postgresql_store_at_once_take_turns(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    with postgres_server.database("mlflow_race") as database:
        _open_side_by_side(postgres_server.url(database), tmp_path / "go")


# --- experiments ---------------------------------------------------------------------------


def test_new_experiment_opens_in_the_model_training_view(
    experiment: tuple[MlflowClient, str],
) -> None:
    client, experiment_id = experiment
    tags = client.get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_new_experiment_keeps_artifacts_under_the_store_folder(
    experiment: tuple[MlflowClient, str], store_dir: Path
) -> None:
    client, experiment_id = experiment
    location = client.get_experiment(experiment_id).artifact_location
    assert location == (store_dir / "artifacts").as_uri()


def test_experiment_id_is_the_same_for_the_same_name(
    store: Store, experiment: tuple[MlflowClient, str], request: pytest.FixtureRequest
) -> None:
    client, experiment_id = experiment
    assert store.experiment_id(client, request.node.name) == experiment_id
    assert store.experiment_id(client, f"{request.node.name}-other") != experiment_id


def test_a_local_store_writes_ahead_so_readers_never_block_its_writers(
    tmp_path: Path,
) -> None:
    store = Store.from_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = store.client()
    with tracked_run(client, store.experiment_id(client, "wal")) as run_id:
        reader = sqlite3.connect(tmp_path / "mlflow.db")
        reader.execute("BEGIN")  # a reader in the middle of a transaction...
        assert reader.execute("SELECT count(*) FROM runs").fetchone() == (1,)
        client.set_tag(run_id, "written", "while read")  # ...does not block a write
        assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        reader.close()
    assert client.get_run(run_id).data.tags["written"] == "while read"


def test_runs_url_opens_the_model_training_view() -> None:
    assert runs_url("http://127.0.0.1:5000/", "7") == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    )


# --- tracked runs --------------------------------------------------------------------------


def test_tracked_run_ends_finished_with_its_params_and_tags(
    experiment: tuple[MlflowClient, str],
) -> None:
    client, experiment_id = experiment
    with tracked_run(
        client, experiment_id, "ok", tags={"seed": "3"}, params={"optimizer.lr": "0.1"}
    ) as run_id:
        assert client.get_run(run_id).info.status == "RUNNING"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "ok"
    assert run.data.params == {"optimizer.lr": "0.1"}
    assert run.data.tags["seed"] == "3"


def test_tracked_run_ends_failed_with_an_error_tag_on_an_exception(
    experiment: tuple[MlflowClient, str],
) -> None:
    client, experiment_id = experiment
    with pytest.raises(RuntimeError), tracked_run(client, experiment_id) as run_id:
        raise RuntimeError("boom at postgresql://u:secret@db/x")
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert "boom" in run.data.tags["error"]
    assert "secret" not in run.data.tags["error"]


def test_tracked_run_error_tag_of_a_user_error_is_its_message(
    experiment: tuple[MlflowClient, str],
) -> None:
    client, experiment_id = experiment
    with pytest.raises(UserError), tracked_run(client, experiment_id) as run_id:
        raise UserError("data.path=x.csv does not exist")
    assert client.get_run(run_id).data.tags["error"] == "data.path=x.csv does not exist"


def test_tracked_run_ends_killed_on_keyboard_interrupt(
    experiment: tuple[MlflowClient, str],
) -> None:
    client, experiment_id = experiment
    with pytest.raises(KeyboardInterrupt), tracked_run(client, experiment_id) as run_id:
        raise KeyboardInterrupt
    assert client.get_run(run_id).info.status == "KILLED"


def test_tracked_run_with_a_parent_is_its_child(experiment: tuple[MlflowClient, str]) -> None:
    client, experiment_id = experiment
    with (
        tracked_run(client, experiment_id) as parent,
        tracked_run(client, experiment_id, parent_run_id=parent) as child,
    ):
        pass
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == parent


# --- redaction and params ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://user:secret@host:5432/db", "postgresql://user:***@host:5432/db"),
        (
            "http://a:b@h1 and mysql+pymysql://c:d@h2",
            "http://a:***@h1 and mysql+pymysql://c:***@h2",
        ),
        ("http://127.0.0.1:5000/path", "http://127.0.0.1:5000/path"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ],
)
def test_redact_masks_url_passwords_only(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_flatten_gives_dotted_keys_and_string_values() -> None:
    cfg = OmegaConf.create(
        {"model": {"hidden_sizes": [32, 16], "dropout": 0.1}, "seed": 0, "tracking": {"uri": None}}
    )
    assert flatten(cfg) == {
        "model.hidden_sizes": "[32, 16]",
        "model.dropout": "0.1",
        "seed": "0",
        "tracking.uri": "None",
    }


def test_flatten_descends_into_nested_groups() -> None:
    cfg = OmegaConf.create({"trainer": {"early_stopping": {"patience": 3}}})
    assert flatten(cfg) == {"trainer.early_stopping.patience": "3"}


def test_flatten_masks_passwords_and_caps_long_values() -> None:
    cfg = OmegaConf.create({"tracking": {"uri": "postgresql://u:pw@db/x"}, "note": "x" * 7000})
    flat = flatten(cfg)
    assert flat["tracking.uri"] == "postgresql://u:***@db/x"
    assert len(flat["note"]) == 6000


def test_run_params_leave_out_what_says_nothing_about_the_model() -> None:
    cfg = OmegaConf.create(
        {
            "model": {"_target_": "study.models.Classifier", "dropout": 0.1},
            "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01},
            "diagnosis": {"window": 10},
            "tracking": {"uri": None, "experiment": "study"},
            "seed": 0,
        }
    )
    assert run_params(cfg) == {"model.dropout": "0.1", "optimizer.lr": "0.01", "seed": "0"}


def test_run_params_name_the_config_groups_the_command_chose() -> None:
    cfg = OmegaConf.create(
        {"optimizer": {"_target_": "torch.optim.SGD", "lr": 0.1}, "tracking": {}, "seed": 0}
    )
    overrides = ["optimizer=sgd", "optimizer.lr=0.1", "seed=0", "tracking=remote", "+x=1"]
    assert run_params(cfg, overrides) == {"optimizer": "sgd", "optimizer.lr": "0.1", "seed": "0"}


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0.925000011920929, 0.925), (0.1234567891, 0.1234568), (17, 17.0), (1e-9 / 3, 3.333333e-10)],
)
def test_logged_numbers_keep_the_digits_a_float32_holds(value: float, shown: float) -> None:
    assert clean_number(value) == shown


def test_clean_number_keeps_not_finite_values() -> None:
    assert math.isnan(clean_number(math.nan))
    assert clean_number(math.inf) == math.inf


def test_metric_chart_url_charts_the_metrics_together_by_step() -> None:
    url = metric_chart_url("3", "abc", ("train/loss", "val/loss"))
    assert url.startswith("#/metric?")
    query = parse_qs(url.removeprefix("#/metric?"))
    assert json.loads(query["plot_metric_keys"][0]) == ["train/loss", "val/loss"]
    assert json.loads(query["runs"][0]) == ["abc"]
    assert json.loads(query["experiments"][0]) == ["3"]
    assert query["x_axis"] == ["step"]

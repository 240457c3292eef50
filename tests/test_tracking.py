"""MLflow tracking: the store, experiments, run status, redaction, params, buffered metrics."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from helpers import tiny
from study.callbacks import MetricsLogger
from study.errors import UserError
from study.secrets import redact
from study.tracking import (
    EXPERIMENT_KIND_TAG,
    Store,
    flatten,
    runs_url,
    tracked_run,
)
from study.train import fit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store").resolve() / "mlruns"


@pytest.fixture(scope="module")
def store(store_dir: Path) -> Store:
    # One sqlite store for the module: creating one costs about a second of schema migration.
    return Store.from_config(f"sqlite:///{store_dir / 'mlflow.db'}")


@pytest.fixture
def experiment(store: Store, request: pytest.FixtureRequest) -> tuple[MlflowClient, str]:
    """A new experiment, private to the test, in the module's store."""
    client = store.client()
    return client, store.experiment_id(client, request.node.name)


# --- the store -----------------------------------------------------------------------------


@pytest.mark.parametrize("uri", [None, ""])
def test_default_store_is_sqlite_under_the_project_mlruns(
    uri: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # wherever the command runs from
    store = Store.from_config(uri)
    assert store.uri == f"sqlite:///{ROOT / 'mlruns' / 'mlflow.db'}"
    assert store.artifact_root == ROOT / "mlruns"


def test_mlflow_tracking_uri_chooses_the_store_when_tracking_uri_is_null(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    assert Store.from_config(None).uri == f"sqlite:///{tmp_path.resolve() / 'env.db'}"
    given = f"sqlite:///{tmp_path / 'config.db'}"
    assert Store.from_config(given).uri == f"sqlite:///{tmp_path.resolve() / 'config.db'}"


def test_an_unusable_mlflow_tracking_uri_is_a_user_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/mlruns")
    with pytest.raises(UserError, match=r"^MLFLOW_TRACKING_URI='file:///tmp/mlruns' is not"):
        Store.from_config(None)


def test_relative_sqlite_uri_resolves_to_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = Store.from_config("sqlite:///runs/here.db")
    assert store.uri == f"sqlite:///{tmp_path.resolve() / 'runs' / 'here.db'}"
    assert store.artifact_root == tmp_path.resolve() / "runs"


def test_sqlite_uri_expands_the_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    store = Store.from_config("sqlite:///~/mlflow.db")
    assert store.uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


@pytest.mark.parametrize(
    "uri",
    ["http://127.0.0.1:5000", "https://mlflow.example.com", "postgresql+psycopg2://u:p@db/mlflow"],
)
def test_server_and_database_uris_are_kept_with_no_local_artifact_folder(uri: str) -> None:
    store = Store.from_config(uri)
    assert store.uri == uri
    assert store.artifact_root is None


@pytest.mark.parametrize("uri", ["ftp://host/mlruns", "file:///tmp/mlruns", "./mlruns"])
def test_unusable_uri_is_a_user_error_naming_tracking_uri(uri: str) -> None:
    with pytest.raises(UserError, match=r"tracking\.uri"):
        Store.from_config(uri)


def test_unusable_uri_error_does_not_show_the_password() -> None:
    with pytest.raises(UserError) as caught:
        Store.from_config("ftp://alice:hunter2@host/mlruns")
    assert "hunter2" not in str(caught.value)


# --- experiments ---------------------------------------------------------------------------


def test_new_experiment_opens_in_the_model_training_view(
    experiment: tuple[MlflowClient, str],
) -> None:
    client, experiment_id = experiment
    tags = client.get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert EXPERIMENT_KIND_TAG == {"mlflow.experimentKind": "custom_model_development"}


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
    store = Store.from_config(f"sqlite:///{tmp_path / 'mlflow.db'}")
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


# --- buffered metric logging ---------------------------------------------------------------


class StoreProbe(pl.Callback):
    """Reads, at the end of each epoch, how many val/loss points MLflow holds so far."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.seen: list[int] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seen.append(len(self.client.get_metric_history(self.run_id, "val/loss")))


def _logged_run(
    make_cfg: Callable[..., DictConfig],
    experiment: tuple[MlflowClient, str],
    tmp_path: Path,
    flush_every_s: float,
):
    client, experiment_id = experiment
    with (
        tracked_run(client, experiment_id) as run_id,
        MetricsLogger(client, run_id, flush_every_s=flush_every_s) as logger,
    ):
        probe = StoreProbe(client, run_id)
        result = fit(make_cfg(*tiny("trainer.max_epochs=5")), tmp_path / "out", [logger, probe])
    return client, run_id, probe, result


def test_metrics_logger_buffers_until_the_end_of_training(
    make_cfg: Callable[..., DictConfig], experiment: tuple[MlflowClient, str], tmp_path: Path
) -> None:
    client, run_id, probe, result = _logged_run(make_cfg, experiment, tmp_path, 1e6)
    assert probe.seen == [0, 0, 0, 0, 0]  # nothing written while training...
    for name in ("train/loss", "val/loss", "val/acc"):  # ...then the whole curve, step = epoch
        points = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
        assert [m.step for m in points] == [1, 2, 3, 4, 5]
        assert [m.value for m in points] == pytest.approx([row[name] for row in result.history])


def test_metrics_logger_sends_live_curves_when_its_interval_has_passed(
    make_cfg: Callable[..., DictConfig], experiment: tuple[MlflowClient, str], tmp_path: Path
) -> None:
    client, run_id, probe, _ = _logged_run(make_cfg, experiment, tmp_path, 1e-9)
    assert probe.seen == [1, 2, 3, 4, 5]
    assert len(client.get_metric_history(run_id, "val/loss")) == 5


def test_metrics_logger_flush_writes_what_it_buffered(
    make_cfg: Callable[..., DictConfig], experiment: tuple[MlflowClient, str], tmp_path: Path
) -> None:
    client, experiment_id = experiment

    class FlushAtEpoch2(StoreProbe):
        def __init__(self, logger: MetricsLogger) -> None:
            super().__init__(logger.client, logger.run_id)
            self.logger = logger

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.current_epoch == 1:
                self.logger.flush()
            super().on_train_epoch_end(trainer, pl_module)

    with (
        tracked_run(client, experiment_id) as run_id,
        MetricsLogger(client, run_id, flush_every_s=1e6) as logger,
    ):
        probe = FlushAtEpoch2(logger)
        fit(make_cfg(*tiny("trainer.max_epochs=4")), tmp_path / "out", [logger, probe])
    assert probe.seen == [0, 2, 2, 2]
    assert len(client.get_metric_history(run_id, "val/loss")) == 4


class CountingClient(MlflowClient):
    """A real client that counts its log_batch calls."""

    def __init__(self, tracking_uri: str) -> None:
        super().__init__(tracking_uri)
        self.batches = 0

    def log_batch(self, *args: Any, **kwargs: Any) -> Any:
        self.batches += 1
        return super().log_batch(*args, **kwargs)


def test_metrics_logger_finish_sends_the_curve_final_metrics_and_tags_in_one_write(
    make_cfg: Callable[..., DictConfig], experiment: tuple[MlflowClient, str], tmp_path: Path
) -> None:
    reader, experiment_id = experiment
    client = CountingClient(reader.tracking_uri)
    with (
        tracked_run(client, experiment_id) as run_id,
        MetricsLogger(client, run_id, flush_every_s=1e6) as logger,
    ):
        result = fit(make_cfg(*tiny("trainer.max_epochs=3")), tmp_path / "out", [logger])
        writes_before = client.batches
        logger.finish({"best_epoch": result.best_epoch}, tags={"fit": "good"})
        assert client.batches == writes_before + 1
    assert client.batches == writes_before + 1  # nothing left for the end of the block
    run = reader.get_run(run_id)
    assert run.data.metrics["best_epoch"] == result.best_epoch
    assert run.data.tags["fit"] == "good"
    assert [m.step for m in reader.get_metric_history(run_id, "val/loss")] == [1, 2, 3]


def test_a_failed_run_keeps_the_epochs_it_trained(
    make_cfg: Callable[..., DictConfig], experiment: tuple[MlflowClient, str], tmp_path: Path
) -> None:
    client, experiment_id = experiment

    class FailAtEpoch3(pl.Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.current_epoch == 2:
                raise RuntimeError("disk on fire")

    run_ids = []
    with (
        pytest.raises(RuntimeError, match="disk on fire"),
        tracked_run(client, experiment_id) as run_id,
        MetricsLogger(client, run_id, flush_every_s=1e6) as logger,
    ):
        run_ids.append(run_id)
        fit(make_cfg(*tiny("trainer.max_epochs=5")), tmp_path / "out", [logger, FailAtEpoch3()])
    [run_id] = run_ids
    assert client.get_run(run_id).info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == [1, 2, 3]

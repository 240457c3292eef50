"""RunLog: a run's per-epoch metrics to MLflow in batches, as a Lightning run feeds it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from helpers import tiny
from study.run_log import RunLog
from study.tracking import tracked_run
from study.train import fit


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
        RunLog(client, run_id, flush_every_s=flush_every_s) as logger,
    ):
        probe = StoreProbe(client, run_id)
        result = fit(
            make_cfg(*tiny("trainer.max_epochs=5")),
            tmp_path / "out",
            log=logger,
            callbacks=[probe],
        )
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
        def __init__(self, logger: RunLog) -> None:
            super().__init__(logger.client, logger.run_id)
            self.logger = logger

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.current_epoch == 1:
                self.logger.flush()
            super().on_train_epoch_end(trainer, pl_module)

    with (
        tracked_run(client, experiment_id) as run_id,
        RunLog(client, run_id, flush_every_s=1e6) as logger,
    ):
        probe = FlushAtEpoch2(logger)
        fit(
            make_cfg(*tiny("trainer.max_epochs=4")),
            tmp_path / "out",
            log=logger,
            callbacks=[probe],
        )
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
        RunLog(client, run_id, flush_every_s=1e6) as logger,
    ):
        result = fit(make_cfg(*tiny("trainer.max_epochs=3")), tmp_path / "out", log=logger)
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
        RunLog(client, run_id, flush_every_s=1e6) as logger,
    ):
        run_ids.append(run_id)
        fit(
            make_cfg(*tiny("trainer.max_epochs=5")),
            tmp_path / "out",
            log=logger,
            callbacks=[FailAtEpoch3()],
        )
    [run_id] = run_ids
    assert client.get_run(run_id).info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == [1, 2, 3]

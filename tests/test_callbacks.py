"""Lightning callbacks: per-epoch metrics to MLflow in batches; epoch progress (a bar in a
terminal, plain lines elsewhere)."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from helpers import tiny
from study.callbacks import EpochProgress, MetricsLogger, TrialReporter
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


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _train(progress: EpochProgress, epochs: int, max_epochs: int) -> None:
    """Drive the callback through `epochs` epochs of a run allowed `max_epochs`."""
    trainer: Any = SimpleNamespace(max_epochs=max_epochs)
    module: Any = SimpleNamespace(history=[])
    progress.on_train_start(trainer, module)
    for epoch in range(1, epochs + 1):
        module.history.append(
            {"epoch": epoch, "val/loss": 1.0 / epoch, "val/acc": 0.5, "train/loss": 2.0 / epoch}
        )
        progress.on_train_epoch_end(trainer, module)
    progress.on_train_end(trainer, module)


def test_off_a_terminal_it_prints_a_plain_line_every_tenth_of_the_epochs() -> None:
    log = io.StringIO()
    _train(EpochProgress(log), epochs=30, max_epochs=30)
    lines = log.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == [f"{e}/30" for e in range(3, 31, 3)]
    assert lines[-1] == "epoch 30/30  train/loss 0.0667  val/loss 0.0333  val/acc 0.5000"
    assert "\r" not in log.getvalue()


def test_off_a_terminal_an_early_stop_prints_its_last_epoch() -> None:
    log = io.StringIO()
    _train(EpochProgress(log), epochs=7, max_epochs=30)
    lines = log.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["3/30", "6/30", "7/30"]
    assert lines[-1].endswith("(stopped)")


def test_in_a_terminal_a_bar_counts_epochs_with_the_losses() -> None:
    terminal = Terminal()
    _train(EpochProgress(terminal), epochs=7, max_epochs=30)
    screen = terminal.getvalue()
    assert "\r" in screen  # one bar, redrawn in place
    last = screen.rsplit("\r", 1)[-1]
    assert last.startswith("7/30 epochs |")
    assert last.rstrip().endswith(", train/loss 0.2857  val/loss 0.1429")
    assert "1/1" not in screen


class _Trial:
    """The two calls TrialReporter makes on an Optuna trial."""

    def __init__(self) -> None:
        self.reports: list[tuple[float, int]] = []

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return False


def _epoch(
    reporter: TrialReporter, train_loss: float, baseline: float = 0.7, val_loss: float = 0.5
) -> Any:
    trainer: Any = SimpleNamespace(should_stop=False)
    module: Any = SimpleNamespace(
        history=[{"epoch": 1, "train/loss": train_loss, "val/loss": val_loss}],
        baseline_loss=baseline,
    )
    reporter.on_train_epoch_end(trainer, module)
    return trainer


def test_a_finite_training_loss_above_the_diverge_level_stops_the_trial_as_diverged() -> None:
    reporter = TrialReporter(_Trial(), "val/loss", maximize=False, diverge_level=3.0)  # type: ignore[arg-type]
    trainer = _epoch(reporter, train_loss=2.2)  # 2.2 > 3 x 0.7: finite, but exploded
    assert trainer.should_stop
    assert reporter.outcome_tags() == {"trial_state": "PRUNED", "reason": "diverged"}


def test_a_training_loss_below_the_diverge_level_trains_on_and_is_reported() -> None:
    trial = _Trial()
    reporter = TrialReporter(trial, "val/loss", maximize=False, diverge_level=3.0)  # type: ignore[arg-type]
    trainer = _epoch(reporter, train_loss=2.0)  # 2.0 < 2.1
    assert not trainer.should_stop
    assert trial.reports == [(0.5, 1)]
    assert reporter.outcome_tags() == {"trial_state": "COMPLETE"}


def test_a_nan_validation_loss_with_a_finite_training_loss_stops_the_trial_as_diverged() -> None:
    trial = _Trial()
    reporter = TrialReporter(trial, "val/loss", maximize=False, diverge_level=3.0)  # type: ignore[arg-type]
    trainer = _epoch(reporter, train_loss=0.5, val_loss=math.nan)
    assert trainer.should_stop
    assert trial.reports == []  # a NaN is never reported as the trial's best
    assert reporter.outcome_tags() == {"trial_state": "PRUNED", "reason": "diverged"}

"""fit(): tiny real training runs: curves, early stopping, best checkpoint, determinism."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from helpers import tiny
from study.config import validate
from study.data import prepare_data
from study.epochs import FitResult
from study.paths import CONF_DIR
from study.train import EpochProgress, build_model, fit

# A learning rate high enough that val/loss turns up within a few dozen epochs.
STOPS_EARLY = tiny(
    "trainer.max_epochs=60", "trainer.early_stopping.patience=2", "optimizer.lr=0.05"
)

MakeCfg = Callable[..., DictConfig]


def _cfg(make_cfg: MakeCfg, *overrides: str) -> DictConfig:
    cfg = make_cfg(*overrides)
    validate(cfg)
    return cfg


@pytest.fixture(scope="module")
def stopped_early(tmp_path_factory: pytest.TempPathFactory) -> tuple[DictConfig, FitResult]:
    """The classifier run that stops early, trained once for the tests that read it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=STOPS_EARLY)
    validate(cfg)
    return cfg, fit(cfg, tmp_path_factory.mktemp("stopped_early"))


def _load_best(cfg: DictConfig, checkpoint: Path | None):
    """A fresh model with the checkpoint's weights, and the splits of the data cfg names."""
    assert checkpoint is not None
    splits = prepare_data(cfg).splits
    model = build_model(cfg, splits)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    return model.eval(), splits


def test_classifier_history_has_one_row_per_epoch_with_its_metrics(
    make_cfg: MakeCfg, tmp_path: Path
) -> None:
    result = fit(_cfg(make_cfg, *tiny("trainer.max_epochs=5")), tmp_path)
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4, 5]
    for row in result.history:
        assert set(row) == {"epoch", "train/loss", "val/loss", "val/acc"}
        assert 0 <= row["val/acc"] <= 1
    assert set(result.test_metrics) == {"test/loss", "test/acc"}


def test_regressor_history_has_one_row_per_epoch_with_its_metrics(
    make_cfg: MakeCfg, tmp_path: Path
) -> None:
    result = fit(_cfg(make_cfg, *tiny("model=regressor", "trainer.max_epochs=5")), tmp_path)
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4, 5]
    for row in result.history:
        assert set(row) == {"epoch", "train/loss", "val/loss", "val/rmse", "val/mae", "val/r2"}
    assert set(result.test_metrics) == {"test/loss", "test/rmse", "test/mae", "test/r2"}


@pytest.mark.parametrize(
    ("progress_bar", "lines"), [("true", [f"epoch {e}/5" for e in range(1, 6)]), ("false", [])]
)
def test_progress_counts_epochs_not_lightning_batches(
    make_cfg: MakeCfg,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    progress_bar: str,
    lines: list[str],
) -> None:
    fit(
        _cfg(make_cfg, *tiny("trainer.max_epochs=5", f"trainer.progress_bar={progress_bar}")),
        tmp_path,
    )
    out = capsys.readouterr().out
    assert [line.split("  ")[0] for line in out.splitlines()] == lines  # not a tty: plain lines
    assert "\r" not in out and "1/1" not in out


def test_sklearn_multiclass_data_trains_a_classifier(make_cfg: MakeCfg, tmp_path: Path) -> None:
    result = fit(
        _cfg(make_cfg, "data=wine", "trainer.max_epochs=3", "trainer.progress_bar=false"),
        tmp_path,
    )
    assert len(result.history) == 3
    assert 0 <= result.test_metrics["test/acc"] <= 1


def test_early_stopping_stops_patience_epochs_after_the_best(
    stopped_early: tuple[DictConfig, FitResult],
) -> None:
    _, result = stopped_early
    losses = [row["val/loss"] for row in result.history]
    best_epoch = int(np.argmin(losses)) + 1
    assert result.stopped_early
    assert len(result.history) < 60
    assert result.best_epoch == best_epoch
    assert result.best_val_loss == min(losses)
    assert result.stopped_epoch == len(result.history) == best_epoch + 2  # patience=2


def test_early_stopping_can_be_switched_off(
    stopped_early: tuple[DictConfig, FitResult], tmp_path: Path
) -> None:
    cfg, stopping = stopped_early
    cfg = copy.deepcopy(cfg)
    cfg.trainer.max_epochs = 20
    cfg.trainer.early_stopping.enabled = False
    running = fit(cfg, tmp_path / "off")
    assert stopping.stopped_epoch < 20  # the same run would have stopped...
    assert not running.stopped_early
    assert [row["epoch"] for row in running.history] == list(range(1, 21))  # ...but runs on


def test_best_checkpoint_is_kept_in_the_output_dir(make_cfg: MakeCfg, tmp_path: Path) -> None:
    result = fit(_cfg(make_cfg, *tiny()), tmp_path)
    assert result.checkpoint == tmp_path / "checkpoints" / "best.ckpt"
    assert result.checkpoint.is_file()


def test_checkpoint_holds_the_weights_of_the_best_epoch(
    stopped_early: tuple[DictConfig, FitResult],
) -> None:
    cfg, result = stopped_early
    assert result.best_epoch < result.stopped_epoch  # so best and last weights differ
    model, splits = _load_best(cfg, result.checkpoint)
    with torch.no_grad():
        val = model.metrics(model(splits.val.x), splits.val.y)
    assert val["loss"].item() == pytest.approx(result.best_val_loss, rel=1e-5)


@pytest.mark.parametrize("model", ["classifier", "regressor"])
def test_test_metrics_are_those_of_the_best_checkpoint(
    make_cfg: MakeCfg, tmp_path: Path, model: str, stopped_early: tuple[DictConfig, FitResult]
) -> None:
    if model == "classifier":
        cfg, result = stopped_early
    else:
        cfg = _cfg(make_cfg, *STOPS_EARLY, f"model={model}")
        result = fit(cfg, tmp_path)
    assert result.best_epoch < result.stopped_epoch
    reloaded, splits = _load_best(cfg, result.checkpoint)
    with torch.no_grad():
        test = reloaded.metrics(reloaded(splits.test.x), splits.test.y)
    assert set(result.test_metrics) == {f"test/{name}" for name in test}
    for name, value in test.items():
        assert result.test_metrics[f"test/{name}"] == pytest.approx(value.item(), rel=1e-5)


def test_same_seed_gives_identical_runs(make_cfg: MakeCfg, tmp_path: Path) -> None:
    cfg = _cfg(make_cfg, *tiny("model.dropout=0.2", "trainer.max_epochs=6"))
    first = fit(cfg, tmp_path / "first")
    second = fit(cfg, tmp_path / "second")
    assert first.history == second.history
    assert first.test_metrics == second.test_metrics


def test_different_seed_gives_a_different_run(make_cfg: MakeCfg, tmp_path: Path) -> None:
    first = fit(_cfg(make_cfg, *tiny("seed=0")), tmp_path / "first")
    second = fit(_cfg(make_cfg, *tiny("seed=1")), tmp_path / "second")
    assert first.data_fingerprint != second.data_fingerprint
    assert first.history != second.history


@pytest.mark.parametrize(
    ("optimizer", "optimizer_class"),
    [
        ("sgd", torch.optim.SGD),
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
        ("rmsprop", torch.optim.RMSprop),
    ],
)
def test_each_optimizer_trains_the_model(
    make_cfg: MakeCfg, tmp_path: Path, optimizer: str, optimizer_class: type
) -> None:
    cfg = _cfg(
        make_cfg,
        *tiny(
            f"optimizer={optimizer}",
            "optimizer.lr=0.02",
            "model=regressor",
            "trainer.max_epochs=20",
            "trainer.early_stopping.enabled=false",
        ),
    )
    built = build_model(cfg, prepare_data(cfg).splits).configure_optimizers()
    assert type(built) is optimizer_class
    assert built.param_groups[0]["lr"] == 0.02
    losses = [row["train/loss"] for row in fit(cfg, tmp_path).history]
    assert losses[-1] < 0.5 * losses[0]


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

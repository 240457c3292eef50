"""EpochProgress: epochs counted with their losses, a bar in a terminal, plain lines elsewhere."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

from study.callbacks import EpochProgress


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

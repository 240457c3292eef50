"""Learning curves: where early stopping should stop, and a plot of train vs validation loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path


def best_row(history: Sequence[dict[str, float]]) -> dict[str, float]:
    """The epoch of minimum (finite) validation loss, or {} when there is none."""
    finite = [row for row in history if math.isfinite(row.get("val/loss", math.nan))]
    return min(finite, key=lambda row: row["val/loss"]) if finite else {}


def plot_curves(history: Sequence[dict[str, float]], path: Path, title: str = "") -> Path:
    """Train and validation loss per epoch, with the early-stopping point marked."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in worker processes
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(figsize=(6, 4), dpi=80)
    axes.plot(epochs, [row["train/loss"] for row in history], label="train/loss")
    axes.plot(epochs, [row["val/loss"] for row in history], label="val/loss")
    best = best_row(history)
    if best:
        axes.axvline(best["epoch"], color="grey", linestyle="--", linewidth=1)
        axes.scatter(
            [best["epoch"]],
            [best["val/loss"]],
            color="red",
            zorder=3,
            label=f"early stop: epoch {int(best['epoch'])}",
        )
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path

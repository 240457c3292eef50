"""Figures: what curves.png says and marks, read from the drawn figure, not from the PNG."""

from __future__ import annotations

from pathlib import Path

from study.plots import CURVES_SIZE, DPI, Panel, curves_figure, plot_curves


def history(val: list[float]) -> list[dict[str, float]]:
    return [
        {"epoch": float(epoch), "train/loss": 1.0 - 0.05 * epoch, "val/loss": loss}
        for epoch, loss in enumerate(val, start=1)
    ]


# Lowest at epoch 7, trained on to epoch 17 (early stopping's patience).
STOPPED_LATE = history([1.0 - 0.1 * e for e in range(1, 8)] + [0.35 + 0.01 * e for e in range(10)])


def texts(panel: Panel) -> tuple[list[str], list[float]]:
    """The legend's entries and the x positions of the vertical lines drawn."""
    [axes] = curves_figure(panel).axes
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    vertical = [
        line.get_xdata()[0] for line in axes.get_lines() if len(set(line.get_xdata())) == 1
    ]
    return legend, vertical


def test_the_best_epoch_and_where_training_stopped_are_marked_apart() -> None:
    legend, vertical = texts(Panel("trial 07", STOPPED_LATE, "good"))
    assert "best epoch: 7" in legend
    assert "training stopped: epoch 17" in legend
    assert sorted(vertical) == [7, 17]
    assert not [text for text in legend if "early stop" in text]


def test_a_run_whose_best_epoch_is_its_last_marks_one_epoch() -> None:
    legend, vertical = texts(Panel("run", history([0.9, 0.8, 0.7]), "underfit"))
    assert "best epoch: 3" in legend
    assert not [text for text in legend if text.startswith("training stopped")]
    assert vertical == [3]


def test_each_line_draws_its_own_curve_and_the_best_epoch_sits_on_the_val_curve() -> None:
    [axes] = curves_figure(Panel("run", STOPPED_LATE, "good", baseline=0.69)).axes
    lines = {line.get_label(): line for line in axes.get_lines()}
    epochs = [row["epoch"] for row in STOPPED_LATE]
    for label, key in (("train", "train/loss"), ("validation", "val/loss")):
        assert list(lines[label].get_xdata()) == epochs, label
        assert list(lines[label].get_ydata()) == [row[key] for row in STOPPED_LATE], label
    assert lines["train"].get_color() == "tab:gray"  # grey, as every figure's legend says
    assert set(lines["constant predictor"].get_ydata()) == {0.69}
    assert lines["constant predictor"].get_linestyle() == ":"
    [best] = [c for c in axes.collections if c.get_label() == "best epoch: 7"]
    assert best.get_offsets().tolist() == [[7.0, STOPPED_LATE[6]["val/loss"]]]


def test_without_a_baseline_no_constant_predictor_is_drawn() -> None:
    [axes] = curves_figure(Panel("run", STOPPED_LATE, "good")).axes
    assert "constant predictor" not in [line.get_label() for line in axes.get_lines()]


def test_the_title_names_the_run_and_its_verdict() -> None:
    [axes] = curves_figure(Panel("trial 03", STOPPED_LATE, "pruned", "cut")).axes
    assert axes.get_title() == "trial 03: pruned"


def test_curves_png_is_large_enough_to_read_in_the_artifact_viewer(tmp_path: Path) -> None:
    from PIL import Image

    path = plot_curves(STOPPED_LATE, tmp_path / "curves.png", "run", "good", "why")
    width, height = Image.open(path).size
    assert (width, height) == (CURVES_SIZE[0] * DPI, CURVES_SIZE[1] * DPI)
    assert width >= 800
    assert curves_figure(Panel("run", STOPPED_LATE)).axes[0].title.get_fontsize() >= 10


def test_each_verdict_has_its_own_colour() -> None:
    verdicts = ["underfit", "good", "overfit", "diverged", "pruned", ""]
    colours = [
        curves_figure(Panel("run", STOPPED_LATE, v)).axes[0].lines[1].get_color() for v in verdicts
    ]
    assert len(set(colours)) == len(verdicts), dict(zip(verdicts, colours, strict=True))

"""The study as one interactive page (study.html) that MLflow's artifact viewer shows.

Four plotly figures on one page: the optimization history (pruned trials shown as such, where
the pruner stopped them), parallel coordinates coloured by each trial's value (its val/loss at
its best epoch), the parameters' importances, and every trial's intermediate values. plotly.js
is inlined once (a few MB): the page needs no network, and one page costs less than four.
Readable at 1,000 trials: no legend of trial names, thin translucent curves.
"""

from __future__ import annotations

import html
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

PAGE = "study.html"
COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED
_HEIGHT = 520  # px a figure: four stack in the viewer's iframe, each fully readable


def history_figure(study: optuna.Study, metric: str) -> Figure:
    """Each finished trial's value by trial number, the best so far as a step line; a pruned
    trial at the value it had when pruned, marked with an x."""
    import plotly.graph_objects as go

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    done = [t for t in trials if t.state == COMPLETE and t.value is not None]
    cut = [t for t in trials if t.state == PRUNED and t.intermediate_values]
    better = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    best: list[float] = []
    for trial in done:
        value = float(trial.value)  # type: ignore[arg-type]
        best.append(better(best[-1], value) if best else value)
    figure = go.Figure()
    figure.add_scatter(
        x=[t.number for t in done],
        y=[t.value for t in done],
        mode="markers",
        name="complete",
        marker={"color": "#1f77b4", "size": 7},
        hovertemplate="trial %{x}: %{y:.4g}<extra>complete</extra>",
    )
    last_step = [max(t.intermediate_values) for t in cut]
    figure.add_scatter(
        x=[t.number for t in cut],
        y=[t.intermediate_values[step] for t, step in zip(cut, last_step, strict=True)],
        mode="markers",
        name="pruned (its value when stopped)",
        marker={"color": "#ff7f0e", "symbol": "x", "size": 7},
        customdata=last_step,
        hovertemplate="trial %{x}: %{y:.4g}, pruned at epoch %{customdata}<extra>pruned</extra>",
    )
    figure.add_scatter(
        x=[t.number for t in done],
        y=best,
        mode="lines",
        line={"shape": "hv", "color": "#d62728"},
        name="best so far",
    )
    figure.update_layout(
        title="Optimization history", xaxis_title="trial", yaxis_title=f"{metric} (best epoch)"
    )
    return figure


def optuna_figure(name: str, study: optuna.Study, metric: str) -> Figure | None:
    """One of Optuna's plotly figures, made readable for many trials; None where the study
    cannot support it yet (importances need two complete trials)."""
    from optuna import visualization

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            plot = getattr(visualization, name)
            named = name != "plot_intermediate_values"  # it plots the reported values
            figure = plot(study, target_name=metric) if named else plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError):
            return None
    if name == "plot_intermediate_values":
        n = len(study.trials)
        figure.update_traces(
            showlegend=False, opacity=max(0.15, min(0.8, 30 / max(n, 1))), line={"width": 1}
        )
        figure.update_layout(
            title=f"Intermediate values: each trial's best {metric} so far, by epoch",
            xaxis_title="epoch",
            yaxis_title=metric,
        )
    return figure


def figures(study: optuna.Study, metric: str) -> list[Figure]:
    """The page's figures, in reading order; none before a trial has finished."""
    if not [t for t in study.get_trials(deepcopy=False) if t.state in (COMPLETE, PRUNED)]:
        return []
    made = [history_figure(study, metric)]
    for name in ("plot_parallel_coordinate", "plot_param_importances", "plot_intermediate_values"):
        figure = optuna_figure(name, study, metric)
        if figure is not None:
            made.append(figure)
    if len(made) > 1 and made[1].data:  # colour: the trial's value at its best epoch
        made[1].update_layout(
            title=f"Parallel coordinates, coloured by {metric} at the best epoch"
        )
    return made


def write_page(study: optuna.Study, path: Path, metric: str = "val/loss") -> Path | None:
    """study.html with the study's figures and plotly.js inlined; None when there is nothing
    to plot yet."""
    made = figures(study, metric)
    if not made:
        return None
    parts = [
        figure.to_html(
            full_html=False,
            include_plotlyjs=index == 0,  # inlined once, for the whole page
            default_height=_HEIGHT,
            config={"displaylogo": False, "responsive": True},
        )
        for index, figure in enumerate(made)
    ]
    title = html.escape(f"study {study.study_name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body style='margin:0;font-family:sans-serif'>{''.join(parts)}</body></html>"
    )
    return path

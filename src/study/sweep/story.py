"""The study's story on its parent run: how many trials were good, underfit, overfit, diverged or
pruned, and the clearest of them side by side with their early-stopping points (study.png).

A study's parent is a study, not a run: its `fit` tag says "study" and its reason counts the
trials' verdicts, each read from the trial's own `fit` tag.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from study.compare import load_run
from study.diagnosis import (
    DIVERGED,
    OVERFIT,
    PRUNED,
    STUDY,
    UNDERFIT,
    counts_line,
    verdict_counts,
)
from study.errors import UserError
from study.plots import Panel, plot_comparison

STORY_FIGURE = "study.png"
_PAGE = 1000  # runs per search: MLflow's most without paging


@dataclass(frozen=True)
class Story:
    counts: dict[str, int]  # trials by verdict, every verdict listed
    figure: Path | None  # study.png, when a trial has curves
    picks: list[tuple[str, Run]]  # (role, trial run) drawn in the figure, in panel order

    @property
    def tags(self) -> dict[str, str]:
        """The parent's verdict columns: a study, and its trials counted by verdict."""
        return {"fit": STUDY, "fit.reason": f"trials: {counts_line(self.counts)}"}


def trial_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Run]:
    """Every child run of the parent, all pages."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
            max_results=_PAGE,
            page_token=token,
        )
        runs += page
        token = page.token
        if not token:
            return runs


def _metric(run: Run, name: str) -> float:
    value = run.data.metrics.get(name, math.nan)
    return value if math.isfinite(value) else math.nan


def pick(runs: Sequence[Run]) -> list[tuple[str, Run]]:
    """The runs that tell the story: the best trial, the clearest underfit (the highest best
    val/loss in baseline units: it learned least), the clearest overfit (val/loss rose most
    from its minimum) and a diverged one, each once."""
    judged = [
        r for r in runs if "fit" in r.data.tags and math.isfinite(_metric(r, "best_val_loss"))
    ]
    by_verdict = {
        verdict: [r for r in judged if r.data.tags["fit"] == verdict]
        for verdict in (UNDERFIT, OVERFIT)
    }
    picks: list[tuple[str, Run]] = []
    calm = [r for r in judged if r.data.tags["fit"] not in (DIVERGED, PRUNED)]
    if calm:
        picks.append(("best", min(calm, key=lambda r: _metric(r, "best_val_loss"))))
    if by_verdict[UNDERFIT]:
        learned_least = max(
            by_verdict[UNDERFIT],
            key=lambda r: _metric(r, "best_val_loss") / (_metric(r, "baseline_loss") or 1.0),
        )
        picks.append(("clearest underfit", learned_least))
    if by_verdict[OVERFIT]:
        picks.append(
            ("clearest overfit", max(by_verdict[OVERFIT], key=lambda r: _metric(r, "val_rise")))
        )
    diverged = [r for r in runs if r.data.tags.get("fit") == DIVERGED]
    if diverged:
        picks.append(("diverged", diverged[0]))
    seen: set[str] = set()
    unique = []
    for role, run in picks:
        if run.info.run_id not in seen:
            seen.add(run.info.run_id)
            unique.append((role, run))
    return unique


def tell_story(
    client: MlflowClient, experiment_id: str, parent_run_id: str, folder: Path
) -> Story:
    """Count the trials' verdicts and draw the chosen trials' curves into folder/study.png."""
    runs = trial_runs(client, experiment_id, parent_run_id)
    counts = verdict_counts(r.data.tags["fit"] for r in runs if "fit" in r.data.tags)
    picks = pick(runs)
    panels = []
    for role, run in picks:
        with contextlib.suppress(UserError):  # a trial without curves (failed at epoch 0)
            compared = load_run(client, run.info.run_id, "")
            verdict = run.data.tags.get("fit", compared.diagnosis.verdict)
            panels.append(
                Panel(
                    f"{role}: {compared.name}",
                    compared.history,
                    verdict,
                    note=run.data.tags.get("fit.reason", ""),
                    baseline=compared.baseline,
                )
            )
    figure = plot_comparison(panels, folder / STORY_FIGURE) if panels else None
    return Story(counts, figure, picks)

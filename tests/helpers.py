"""Helpers shared by tests: tiny-run overrides and the bad-input contract."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from mlflow.tracking import MlflowClient

# Tiny, fast runs: a few epochs on a small class.
TINY = [
    "data.n_samples=120",
    "trainer.max_epochs=4",
    "trainer.progress_bar=false",
    "model.hidden_sizes=[8]",
]


def tiny(*extra: str) -> list[str]:
    return [*TINY, *extra]


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """Assert the bad-input contract (exit 2, one line, no traceback) and return that line."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def all_runs(client: MlflowClient, statuses: Sequence[str] | None = None) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=10_000) if experiments else []
    return [r for r in runs if statuses is None or r.info.status in statuses]

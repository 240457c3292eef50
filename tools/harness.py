"""Drive real studies from Python as a user would: `scripts/run.py -m sweep` in a subprocess,
in a folder of its own, with its study and MLflow runs at hand; and the timing helpers the
benchmarks share. Used by the benchmarks, the GPU check and the fault scenarios.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from study.config import resolved_config, validate
from study.paths import CONF_DIR, PROJECT_ROOT
from study.sweep.backends import FINISHED, make_storage


class Sweep:
    """One study in a folder of its own, driven through scripts/run.py -m sweep."""

    def __init__(
        self, folder: Path, name: str = "faults", *overrides: str, storage: str | None = None
    ) -> None:
        self.folder = folder
        self.name = name
        self.storage = storage or str(folder / f"{name}.journal")
        self.tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
        self.overrides = list(overrides)

    def command(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            str(PROJECT_ROOT / "scripts" / "run.py"),
            "-m",
            "sweep",
            f"sweep.study_name={self.name}",
            f"sweep.storage={self.storage}",
            f"tracking.uri={self.tracking_uri}",
            f"hydra.sweep.dir={self.folder / self.name}",
            *self.overrides,
            *extra,
        ]

    def start(self, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*extra),
            cwd=self.folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def run(
        self, *extra: str, timeout: float = 600, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*extra),
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )

    def run_to_end(self, *extra: str) -> optuna.Study:
        """Run the study; on failure stop with its output (for scripts, not tests)."""
        completed = self.run(*extra)
        if completed.returncode != 0:
            logs = "".join(
                f"--- {log.name}\n{log.read_text()[-2000:]}"
                for log in sorted((self.folder / self.name).glob("worker_*.log"))
            )
            raise SystemExit(
                f"study {self.name} failed:\n{completed.stdout[-2000:]}"
                f"{completed.stderr[-2000:]}{logs}"
            )
        return self.study()

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.name, storage=make_storage(str(self.storage)))

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        if "://" not in self.storage and not Path(self.storage).exists():
            return []
        try:
            return self.study().get_trials(deepcopy=False)
        except KeyError:  # the journal is there, the study not yet: its parent is creating it
            return []

    def finished(self) -> int:
        return sum(t.state in FINISHED for t in self.trials())

    def running_trials(self) -> int:
        return sum(t.state == optuna.trial.TrialState.RUNNING for t in self.trials())

    def runs(self) -> list:
        client = MlflowClient(self.tracking_uri)
        experiment = client.get_experiment_by_name(self.name)
        if experiment is None:
            return []
        return client.search_runs([experiment.experiment_id], max_results=10_000)

    def parent_status(self) -> str | None:
        """The status of the study's parent run (None before it exists)."""
        parents = [run for run in self.runs() if "mlflow.parentRunId" not in run.data.tags]
        return parents[0].info.status if parents else None

    def runs_left_running(self) -> int:
        return sum(run.info.status == "RUNNING" for run in self.runs())

    def wait_for_running_trial(self, timeout: float = 120) -> int:
        """Block until a trial has trained a few epochs; return its number."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for trial in self.trials():
                if trial.state == optuna.trial.TrialState.RUNNING and trial.last_step:
                    return trial.number
            time.sleep(0.2)
        raise TimeoutError("no trial started training")


def trial_span(study: optuna.Study) -> float:
    """Seconds from the first trial's start to the last one's end: worker start-up excluded."""
    trials = [t for t in study.trials if t.datetime_start and t.datetime_complete]
    first = min(t.datetime_start for t in trials if t.datetime_start)
    last = max(t.datetime_complete for t in trials if t.datetime_complete)
    return (last - first).total_seconds()


def lecture_cfg(*overrides: str, tracking_uri: str | None = None) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "trainer.progress_bar=false",
                "trainer.early_stopping.enabled=false",
                f"tracking.uri={tracking_uri or 'null'}",
                *overrides,
            ],
        )
    validate(cfg)
    return resolved_config(cfg)


def timed(function: Callable[..., object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def interleaved(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall times of each case, the cases taking turns so that drift hits all alike."""
    for case in cases.values():  # first-call costs out of the figures
        case()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            times[name].append(timed(case))
    return times


def fastest(times: dict[str, list[float]]) -> dict[str, float]:
    """Each case's quickest round. Other tenants of this machine only ever add time (a case
    can take 30% longer from one second to the next), so the minimum is the steadiest
    estimate of what the code itself costs, as timeit reports it."""
    return {name: min(values) for name, values in times.items()}

"""Fault scenarios run against real sweeps: killed workers, interrupts, a dead sweep, diverging
and failing trials, and many workers writing at once. Used by python tools/faults.py (a table of
figures) and by the tests.

python tools/faults.py [SCENARIO ...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from harness import Sweep
from mlflow.tracking import MlflowClient

TINY = ["data.n_samples=120", "model.hidden_sizes=[8]", "sweep.sampler=random"]
# Long enough trials that a fault lands mid-trial.
SLOW = [
    "data.n_samples=600",
    "trainer.max_epochs=30",
    "trainer.early_stopping.enabled=false",
    "sweep.sampler=random",
    "sweep.pruner=none",
]


@dataclass
class Outcome:
    scenario: str
    finished: int
    expected: int
    runs_left_running: int
    trials_left_running: int
    recover_s: float | None
    note: str = ""
    exit_code: int | None = None  # of the process the fault hit
    parent_status: str | None = None  # the study's parent run once that process exited
    orphans: tuple[int, ...] = ()  # trials it left RUNNING, for the rerun to fail

    @property
    def ok(self) -> bool:
        return (
            self.finished == self.expected
            and self.runs_left_running == 0
            and self.trials_left_running == 0
        )


def outcome_of(
    sweep: Sweep,
    scenario: str,
    expected: int,
    recover_s: float | None,
    note: str = "",
    **hit: Any,
) -> Outcome:
    """The study's state now; `hit`: what the fault left behind (exit_code, parent_status...)."""
    return Outcome(
        scenario,
        sweep.finished(),
        expected,
        sweep.runs_left_running(),
        sweep.running_trials(),
        recover_s,
        note,
        **hit,
    )


def kill_worker(folder: Path, *overrides: str) -> Outcome:
    """SIGKILL one worker mid-trial: its trials fail, a new worker retries them."""
    sweep = Sweep(folder, "faults", "sweep.n_trials=4", "sweep.workers=2", *SLOW, *overrides)
    process = sweep.start()
    number = sweep.wait_for_running_trial()
    killed_at = datetime.now()
    os.kill(int(sweep.study().trials[number].user_attrs["pid"]), signal.SIGKILL)
    process.communicate(timeout=600)
    retries = [t for t in sweep.trials() if t.user_attrs.get("retry_of") == number]
    starts = [t.datetime_start for t in retries if t.datetime_start is not None]
    recover = (starts[0] - killed_at).total_seconds() if starts else None
    return outcome_of(
        sweep,
        "worker SIGKILLed mid-trial",
        4,
        recover,
        f"trial {number} retried as {[t.number for t in retries]}",
    )


def interrupt(
    folder: Path,
    signum: int,
    *overrides: str,
    resume: bool = True,
    again_after_s: float | None = None,
) -> Outcome:
    """SIGINT/SIGTERM the sweep: exits within seconds, everything closed; rerun resumes (unless
    `resume` is false: the next call interrupts the resumed study in turn). `overrides` (run
    settings: the same study) come last, e.g. packs of trials instead of one at a time.
    `again_after_s`: the same signal a second time that long after the first (an impatient
    Ctrl-C Ctrl-C)."""
    # One trial at a time by default: 2 workers x a pack of 2 train all four trials in a second
    # or two, before the signal lands (one worker packing two trains them in two rounds).
    sweep = Sweep(
        folder, "faults", "sweep.n_trials=4", "sweep.workers=2", "sweep.pack=1", *SLOW, *overrides
    )
    process = sweep.start()
    sweep.wait_for_running_trial()
    sent = time.monotonic()
    os.kill(process.pid, signum)
    if again_after_s is not None:
        time.sleep(again_after_s)
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)
    process.communicate(timeout=120)
    exit_s = time.monotonic() - sent
    left = sweep.runs_left_running() + sweep.running_trials()
    parent_status = sweep.parent_status()
    note = f"exit code {process.returncode} after {exit_s:.1f} s; {left} left running"
    name = f"sweep {signal.Signals(signum).name}{' twice' if again_after_s else ''}"
    if resume:
        note += f" before the rerun; rerun exit {sweep.run().returncode}"
        name += ", then rerun"
    return outcome_of(
        sweep,
        name,
        4 if resume else sweep.finished(),
        exit_s,
        note,
        exit_code=process.returncode,
        parent_status=parent_status,
    )


def kill_sweep(folder: Path) -> Outcome:
    """SIGKILL the sweep and its workers (the machine gone), then rerun the same command."""
    sweep = Sweep(folder, "faults", "sweep.n_trials=4", "sweep.workers=2", "sweep.pack=1", *SLOW)
    process = sweep.start()
    sweep.wait_for_running_trial()
    os.killpg(process.pid, signal.SIGKILL)  # the parent's process group: the parent only
    for trial in sweep.trials():  # workers live in their own sessions: the machine dies too
        if trial.state == optuna.trial.TrialState.RUNNING:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(trial.user_attrs["pid"]), signal.SIGKILL)
    process.communicate(timeout=60)
    stale = sweep.running_trials()
    orphans = tuple(t.number for t in sweep.trials() if t.state == optuna.trial.TrialState.RUNNING)
    started = time.monotonic()
    resumed = sweep.run()
    return outcome_of(
        sweep,
        "sweep SIGKILLed (machine gone), then rerun",
        4,
        time.monotonic() - started,
        f"{stale} trials left RUNNING were failed by the rerun (exit {resumed.returncode})",
        orphans=orphans,
    )


def diverging(folder: Path) -> Outcome:
    """Learning rates far too large: diverged trials stop at once as pruned; the study goes on."""
    conf = folder / "conf" / "search"
    conf.mkdir(parents=True)
    (conf / "huge_lr.yaml").write_text(
        "optimizer.lr: {type: float, low: 10.0, high: 1000.0, log: true}\n"
    )
    sweep = Sweep(
        folder,
        "faults",
        "sweep.n_trials=6",
        "sweep.workers=2",
        *TINY,
        "trainer.max_epochs=8",
        "sweep.pruner=none",
        "optimizer=sgd",
        "search=huge_lr",
        f"--config-dir={folder / 'conf'}",
    )
    started = time.monotonic()
    result = sweep.run()
    diverged = sum(run.data.tags.get("reason") == "diverged" for run in sweep.runs())
    return outcome_of(
        sweep,
        "learning rate far too large",
        6,
        time.monotonic() - started,
        f"{diverged} trials stopped as diverged (exit {result.returncode})",
    )


def failing(folder: Path) -> Outcome:
    """Every trial raises: the study stops after sweep.max_failures, and says why."""
    sweep = Sweep(
        folder,
        "faults",
        "sweep.n_trials=6",
        "sweep.workers=2",
        *TINY,
        "trainer.max_epochs=2",
        "trainer.accelerator=gpu",
        "sweep.max_failures=3",
    )
    started = time.monotonic()
    # A GPU id the sweep is told is there, which torch in the workers cannot find: every
    # trial passes the sweep's checks and raises in its worker.
    result = sweep.run(env={"CUDA_VISIBLE_DEVICES": "0"})
    last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    outcome = outcome_of(
        sweep,
        "every trial fails",
        0,
        time.monotonic() - started,
        f"exit {result.returncode}: {last[:90]}",
    )
    return outcome


def load(folder: Path, n_trials: int = 100, workers: int = 4) -> Outcome:
    """Many workers writing at once: every trial has one run with its whole curve."""
    sweep = Sweep(
        folder,
        "faults",
        f"sweep.n_trials={n_trials}",
        f"sweep.workers={workers}",
        *TINY,
        "trainer.max_epochs=2",
        "trainer.early_stopping.enabled=false",
        "sweep.pruner=none",
    )
    started = time.monotonic()
    result = sweep.run(timeout=900)
    client = MlflowClient(sweep.tracking_uri)
    children = [r for r in sweep.runs() if "trial_number" in r.data.tags]
    numbers = sorted(int(r.data.tags["trial_number"]) for r in children)
    whole = sum(len(client.get_metric_history(r.info.run_id, "val/loss")) == 2 for r in children)
    locked = "database is locked" in (result.stdout + result.stderr)
    return outcome_of(
        sweep,
        f"{workers} workers, {n_trials} short trials",
        n_trials,
        time.monotonic() - started,
        f"{len(children)} runs for {len(set(numbers))} trials, {whole} with "
        f"the whole curve; 'database is locked': {locked}",
    )


SCENARIOS: dict[str, Callable[[Path], Outcome]] = {
    "kill-worker": kill_worker,
    "sigint": lambda folder: interrupt(folder, signal.SIGINT),
    "sigterm": lambda folder: interrupt(folder, signal.SIGTERM),
    "sigint-twice": lambda folder: interrupt(
        folder, signal.SIGINT, "sweep.pack=2", again_after_s=0.3
    ),
    "kill-sweep": kill_sweep,
    "diverge": diverging,
    "fail": failing,
    "load": load,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenarios", nargs="*", help=f"any of {list(SCENARIOS)} (default: all)")
    args = parser.parse_args(argv)
    names = args.scenarios or list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario {sorted(unknown)}: use any of {list(SCENARIOS)}")
    print(
        f"{'scenario':<44}{'finished':>10}{'runs RUNNING':>14}{'trials lost':>13}"
        f"{'recover s':>11}  note"
    )
    all_ok = True
    for name in names:
        with tempfile.TemporaryDirectory() as folder:
            row = SCENARIOS[name](Path(folder))
        lost = row.trials_left_running + max(0, row.expected - row.finished)
        recover = f"{row.recover_s:.1f}" if row.recover_s is not None else "-"
        print(
            f"{row.scenario:<44}{f'{row.finished}/{row.expected}':>10}"
            f"{row.runs_left_running:>14}{lost:>13}{recover:>11}  {row.note}",
            flush=True,
        )
        all_ok &= row.ok
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())

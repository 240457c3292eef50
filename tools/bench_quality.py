"""Speed a user feels, for `python tools/bench.py quality | study-start | budget`:

- quality: the peer study (breast cancer on the peers' stratified 60/20/20 split, MLP 64x64,
  lr/batch/dropout, TPE and the median pruner, 100 trials x <= 30 epochs): the best value
  against wall time of ours (`sweep.pack=auto` and `sweep.pack=1`) and of the plain PyTorch +
  Optuna loop (tools/plain_study.py), and the seconds each needs to reach the plain loop's
  final best;
- study-start: a 2-trial, 1-epoch study end to end vs one process importing torch, MLflow and
  Optuna; its first line, its first trial's start and end, and its last trial to exit;
- budget: `sweep.timeout=60` on the lecture study, packed vs `sweep.pack=1`: trials run and
  the best value of each;
- pack-sizes: the peer study at each pack size, a round per sampler seed: the seconds each
  needs to reach the plain loop's final best, its best value and wall (what `sweep.pack=auto`
  is chosen by).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from harness import Sweep
from plain_study import split_rows
from sklearn.datasets import load_breast_cancer

from study.sweep.backends import FINISHED

TOOLS = Path(__file__).resolve().parent
PEER = [
    "data=csv",
    "data.target=malignant",
    "model.hidden_sizes=[64,64]",
    "trainer.early_stopping.enabled=false",
]


@dataclass(frozen=True)
class Curve:
    """A study's best value so far against seconds since its command started."""

    name: str
    wall: float
    points: list[tuple[float, float]]  # (seconds, value) of each complete trial, in time order
    trials: int
    blind: int = 0  # trials sampled before TPE had its start-up trials finished: at random

    @property
    def best(self) -> float:
        return min((value for _, value in self.points), default=math.inf)

    def reaches(self, target: float) -> float | None:
        """Seconds until the best so far is at least as good as `target`; None: never."""
        return next((seconds for seconds, value in self.points if value <= target), None)

    def best_at(self, seconds: float) -> float:
        return min((value for at, value in self.points if at <= seconds), default=math.inf)


def peer_csv(path: Path, seed: int = 0) -> Path:
    """Breast cancer as a CSV whose rows are ordered so that our split (a seeded permutation:
    study.data.split_and_standardize) takes exactly the peers' stratified 60/20/20 rows."""
    x, y = load_breast_cancer(return_X_y=True)
    train, val, test = split_rows(y)
    n = len(y)
    n_val = n_test = round(n * 0.2)
    assert (len(train), len(val), len(test)) == (n - n_val - n_test, n_val, n_test)
    order = np.empty(n, dtype=np.int64)
    order[np.random.default_rng(seed).permutation(n)] = np.concatenate([train, val, test])
    columns = [f"f{i}" for i in range(x.shape[1])] + ["malignant"]
    table = np.column_stack([x[order], y[order]])
    np.savetxt(path, table, delimiter=",", header=",".join(columns), comments="", fmt="%.10g")
    return path


def our_curve(folder: Path, name: str, *overrides: str) -> Curve:
    sweep = Sweep(folder, name, *overrides)
    started = time.time()
    sweep.run_to_end()
    wall = time.time() - started
    ends = [
        (t.datetime_complete.timestamp() - started, t.value)
        for t in sweep.trials()
        if t.state.name == "COMPLETE" and t.datetime_complete and t.value is not None
    ]
    trials = sweep.trials()
    return Curve(
        name, wall, sorted(ends), sum(t.state in FINISHED for t in trials), sampled_blind(trials)
    )


TPE_STARTUP = 10  # TPESampler's n_startup_trials: it counts finished trials only


def sampled_blind(trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    """Trials that started before TPE_STARTUP trials had finished: TPE sampled them at random.
    With many trials in flight, more than TPE_STARTUP are."""
    done = [t.datetime_complete for t in trials if t.state in FINISHED]
    ends = sorted(end for end in done if end is not None)
    enough = ends[TPE_STARTUP - 1] if len(ends) >= TPE_STARTUP else None
    return sum(
        1 for t in trials if t.datetime_start and (enough is None or t.datetime_start < enough)
    )


def plain_curve(folder: Path, n_trials: int, epochs: int) -> Curve:
    history = folder / "plain_history.json"
    command = [sys.executable, str(TOOLS / "plain_study.py"), f"sqlite:///{folder / 'plain.db'}"]
    started = time.time()
    subprocess.run(
        [*command, f"--trials={n_trials}", f"--epochs={epochs}", f"--history={history}"],
        check=True,
        capture_output=True,
    )
    wall = time.time() - started
    ends = [
        (end - started, value)
        for end, value, state in json.loads(history.read_text())
        if state == "COMPLETE"
    ]
    return Curve("plain loop", wall, sorted(ends), len(ends))


def bench_quality(n_trials: int = 100, epochs: int = 30) -> None:
    print(
        f"time to quality: the peer study (breast cancer, stratified 60/20/20, MLP 64x64, "
        f"lr/batch/dropout, TPE, median pruner, {n_trials} trials x <= {epochs} epochs), one "
        "run each, in turn (a shared 2-core machine: expect 10-30% swings):"
    )
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        csv = peer_csv(folder / "breast_cancer.csv")
        common = [*PEER, f"data.path={csv}", f"sweep.n_trials={n_trials}"]
        common.append(f"trainer.max_epochs={epochs}")
        plain = plain_curve(folder, n_trials, epochs)
        curves = [
            our_curve(folder, "packed", *common, "sweep.pack=auto"),
            our_curve(folder, "one_at_a_time", *common, "sweep.pack=1"),
            plain,
        ]
    target = plain.best
    marks = sorted({5.0, 10.0, 15.0, 20.0, 30.0, plain.wall} | {c.wall for c in curves})
    print(f"  best val/loss so far at t seconds ({', '.join(c.name for c in curves)}):")
    for at in marks:
        row = "  ".join(f"{c.best_at(at):8.4f}" for c in curves)
        print(f"    t={at:6.1f} s  {row}")
    print(f"  target: the plain loop's final best, {target:.4f}")
    for curve in curves:
        reached = curve.reaches(target)
        ratio = (
            f"{reached / plain.reaches(target):.2f}x the plain loop's"  # type: ignore[operator]
            if reached is not None
            else "never"
        )
        print(
            f"  {curve.name:<14} wall {curve.wall:6.1f} s ({curve.wall / plain.wall:.2f}x), "
            f"{curve.trials} trials, best {curve.best:.4f}; reaches the target at "
            f"{'-' if reached is None else f'{reached:.1f} s'} ({ratio})"
        )


PACKS = (1, 2, 4, 8, 16)


def bench_pack_sizes(seeds: int = 2, n_trials: int = 100, epochs: int = 30) -> None:
    """The peer study at each pack size (2 workers), in turns, against the plain loop's best."""
    print(
        f"pack sizes: the peer study ({n_trials} trials x <= {epochs} epochs, 2 workers), "
        f"sweep.pack in {PACKS} and auto, {seeds} sampler seeds; target: the plain loop's final "
        "best:"
    )
    packs = [*(str(pack) for pack in PACKS), "auto"]
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        csv = peer_csv(folder / "breast_cancer.csv")
        common = [*PEER, f"data.path={csv}", f"sweep.n_trials={n_trials}", "sweep.workers=2"]
        common.append(f"trainer.max_epochs={epochs}")
        plain = plain_curve(folder, n_trials, epochs)
        curves: dict[str, list[Curve]] = {pack: [] for pack in packs}
        for seed in range(seeds):
            for pack in packs if seed % 2 == 0 else packs[::-1]:
                overrides = [*common, f"sweep.pack={pack}", f"sweep.seed={seed * 2}"]
                curves[pack].append(our_curve(folder, f"pack{pack}_{seed}", *overrides))
    target = plain.best
    print(
        f"  the plain loop: wall {plain.wall:.1f} s, best {target:.4f} at "
        f"{plain.reaches(target):.1f} s"
    )
    for pack in packs:
        reached = [curve.reaches(target) for curve in curves[pack]]
        shown = ", ".join("never" if r is None else f"{r:.1f}" for r in reached)
        print(
            f"  sweep.pack={pack:<4} reaches it at {shown} s; best "
            f"{', '.join(f'{c.best:.4f}' for c in curves[pack])}; wall "
            f"{', '.join(f'{c.wall:.1f}' for c in curves[pack])} s; sampled at random (before "
            f"{TPE_STARTUP} finished): {', '.join(str(c.blind) for c in curves[pack])}"
        )


def first_line_and_exit(command: Sequence[str], cwd: Path) -> tuple[float, float, str]:
    """Seconds from starting `command` to its first line of output and to its exit; the line."""
    started = time.perf_counter()
    with subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        line = process.stdout.readline()
        first = time.perf_counter() - started
        rest = process.stdout.read()
        process.wait()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{line}{rest}")
    return first, time.perf_counter() - started, line.strip()


def study_start(folder: Path, name: str, *overrides: str) -> dict[str, float]:
    """One 2-trial, 1-epoch study's start-up figures (seconds), and its first line."""
    sweep = Sweep(folder, name, "sweep.n_trials=2", "trainer.max_epochs=1", *overrides)
    started = time.time()
    first, wall, _ = first_line_and_exit(sweep.command(), folder)
    trials = sweep.trials()
    begins = [t.datetime_start.timestamp() for t in trials if t.datetime_start]
    ends = [t.datetime_complete.timestamp() for t in trials if t.datetime_complete]
    return {
        "wall": wall,
        "first line": first,
        "to first trial": min(begins) - started,
        "to its end": min(ends) - started,
        "last trial to exit": started + wall - max(ends),
    }


def bench_study_start(rounds: int = 3) -> None:
    """A 2-trial, 1-epoch study, its workers forked from the fork server or each started
    anew, vs the imports it cannot avoid, in turns; the fastest round of each."""
    imports = [sys.executable, "-c", "import torch, mlflow, optuna"]
    cases = {"fork server": "sweep.fork_server=true", "own imports": "sweep.fork_server=false"}
    figures: dict[str, dict[str, list[float]]] = {case: {} for case in cases}
    import_s: list[float] = []
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for index in range(rounds):
            import_s.append(first_line_and_exit(imports, folder)[1])
            for case, override in cases.items():
                study = f"start{index}_{override.rsplit('=', 1)[1]}"
                for key, value in study_start(folder, study, override).items():
                    figures[case].setdefault(key, []).append(value)
    imported = min(import_s)
    print(
        f"a 2-trial, 1-epoch study (scripts/run.py -m sweep, default workers), fastest of "
        f"{rounds} rounds in turns; `python -c 'import torch, mlflow, optuna'` {imported:.2f} s:"
    )
    for case, values in figures.items():
        best = {key: min(series) for key, series in values.items()}
        print(
            f"  workers from {case:<11}: end to end {best['wall']:5.2f} s "
            f"({best['wall'] / imported:.2f}x the imports; target <= 1.5x), first line "
            f"{best['first line']:.2f} s (target <= 2 s), first trial starts "
            f"{best['to first trial']:.2f} s and ends {best['to its end']:.2f} s, last trial "
            f"to exit {best['last trial to exit']:.2f} s"
        )


def bench_budget(timeout_s: int = 60) -> None:
    print(
        f"sweep.timeout={timeout_s} on the lecture study (n_trials=10000, default workers), "
        "packed vs one at a time, one run each:"
    )
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for pack in ("auto", "1"):
            sweep = Sweep(
                folder,
                f"budget_pack{pack}",
                f"sweep.timeout={timeout_s}",
                "sweep.n_trials=10000",
                f"sweep.pack={pack}",
            )
            started = time.perf_counter()
            study = sweep.run_to_end()
            wall = time.perf_counter() - started
            finished = sum(t.state in FINISHED for t in study.trials)
            print(
                f"  sweep.pack={pack:<4} {finished:5d} trials finished, best val/loss "
                f"{study.best_value:.4f}, wall {wall:.1f} s (the trials in flight at the "
                "budget's end finish)"
            )

"""Packed trials' sections of tools/bench.py (`sweep.pack`): figures, never asserted.

- packed: a study with `sweep.pack=auto` vs `sweep.pack=1`, same workers and sampler seed, one
  seed a round: trials per minute end to end, each seed's best value, and the per-trial fixed
  cost a packed worker pays (timed inside its per-trial calls, tools/stopwatch);
- steps: a packed member's training step vs a solo trial's, at K = 1, 8, 32, 128 members;
- peer: the peer study through `scripts/run.py -m sweep` vs the plain loop of
  tools/plain_study.py (PyTorch, Optuna and MLflow in one process), end to end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import optuna
import torch
from harness import Sweep, fastest, interleaved, lecture_cfg, trial_span
from hydra.utils import instantiate
from omegaconf import DictConfig

from study.data import Splits, prepare_data
from study.packed import arch_of, member_of, train_pack
from study.train import fit

TOOLS = Path(__file__).resolve().parent
PACK_SIZES = (1, 8, 32, 128)
PEER = ("data=breast_cancer", "model.hidden_sizes=[64,64]", "trainer.early_stopping.enabled=false")


@dataclasses.dataclass
class StudyFigures:
    wall: float  # the whole `scripts/run.py -m sweep`
    span: float  # first trial's start to last trial's end
    start: float  # the command's start to the first trial's
    end: float  # the last trial's end to the command's
    trials: int
    epochs: int  # trained, all trials together
    fit: float  # mean fit_seconds of a trial
    best: float

    @classmethod
    def of(cls, study: optuna.Study, started: datetime, ended: datetime) -> StudyFigures:
        trials = study.trials
        first = min(t.datetime_start for t in trials if t.datetime_start)
        last = max(t.datetime_complete for t in trials if t.datetime_complete)
        return cls(
            (ended - started).total_seconds(),
            trial_span(study),
            (first - started).total_seconds(),
            (ended - last).total_seconds(),
            len(trials),
            sum(int(t.user_attrs.get("epochs", 0)) for t in trials),
            statistics.mean(float(t.user_attrs.get("fit_seconds", 0.0)) for t in trials),
            study.best_value,
        )

    @property
    def rate(self) -> float:
        """Trials per minute, end to end."""
        return self.trials / self.wall * 60


def timed_study(folder: Path, name: str, *overrides: str) -> StudyFigures:
    """A real study, its wall time the whole `scripts/run.py -m sweep` command's."""
    sweep = Sweep(folder, name, *overrides)
    started = datetime.now()  # Optuna's trial times are local datetimes
    study = sweep.run_to_end()
    return StudyFigures.of(study, started, datetime.now())


def bench_packed(seeds: int, n_trials: int, epochs: int, workers: int = 2) -> None:
    """Packed vs one trial at a time, a round per sampler seed, which goes first alternating.
    Worker i samples with sweep.seed + i, so round r sets sweep.seed = r x workers: seeds 0 and
    1 would share a worker's sampler (and often the best trial)."""
    common = [f"sweep.workers={workers}", f"sweep.n_trials={n_trials}"]
    common.append(f"trainer.max_epochs={epochs}")
    runs: dict[str, list[StudyFigures]] = {"auto": [], "1": []}
    print(f"lecture MLP, {n_trials} trials x {epochs} epochs, {workers} workers, default search")
    print("space (TPE, median pruner, early stopping), sweep.pack=auto vs 1, a seed a round:")
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for seed in range(seeds):
            for pack in ("auto", "1") if seed % 2 == 0 else ("1", "auto"):
                study = f"pack{pack}_seed{seed}"
                overrides = [*common, f"sweep.pack={pack}", f"sweep.seed={seed * workers}"]
                runs[pack].append(timed_study(folder, study, *overrides))
            packed, alone = runs["auto"][-1], runs["1"][-1]
            print(
                f"  sweep.seed={seed * workers}: packed {packed.rate:.1f} trials/min "
                f"({packed.wall:.1f} s, {packed.span:.1f} s of it from first trial to last), "
                "one at a time "
                f"{alone.rate:.1f} ({alone.wall:.1f} s, {alone.span:.1f} s): "
                f"{packed.rate / alone.rate:.2f}x end to end, {alone.span / packed.span:.2f}x "
                f"over the trials' span; epochs trained {packed.epochs} vs {alone.epochs}"
            )
        summarize_packed(runs, workers)
        # Workers of their own: a forked worker never runs the stopwatch's start-up hook.
        bench_fixed_cost(
            folder, [*common, "sweep.pack=auto", "sweep.seed=0", "sweep.fork_server=false"]
        )


def summarize_packed(runs: dict[str, list[StudyFigures]], workers: int) -> None:
    packed, alone = runs["auto"], runs["1"]
    pairs = list(zip(packed, alone, strict=True))
    end_to_end = statistics.median(p.rate / a.rate for p, a in pairs)
    span = statistics.median(a.span / p.span for p, a in pairs)
    per_epoch = statistics.median((p.epochs / p.span) / (a.epochs / a.span) for p, a in pairs)
    print(
        f"  packed vs one at a time: {end_to_end:.2f}x trials/min end to end (median of "
        f"{len(pairs)} seeds; target >= 5x), {span:.2f}x over the trials' span, {per_epoch:.2f}x "
        f"epochs trained per second over it"
    )
    for name, figures in (("packed", packed), ("one at a time", alone)):
        start = statistics.median(f.start for f in figures)
        end = statistics.median(f.end for f in figures)
        print(
            f"  {name}: the command's start to the first trial's {start:.1f} s, the last "
            f"trial's end to the command's {end:.1f} s (medians): "
            f"{(start + end) / figures[0].trials * 1e3:.0f} ms a trial"
        )
    best = {name: [f.best for f in figures] for name, figures in runs.items()}
    low, high = min(best["1"]), max(best["1"])
    inside = sum(value <= high for value in best["auto"])
    print(f"  best val/loss by seed, packed:        {fmt(best['auto'])}")
    print(f"  best val/loss by seed, one at a time: {fmt(best['1'])}")
    print(
        f"  {inside} of {len(packed)} packed seeds within the one-at-a-time seeds' spread "
        f"[{low:.4f}, {high:.4f}] or better; means {statistics.mean(best['auto']):.4f} vs "
        f"{statistics.mean(best['1']):.4f}"
    )
    fixed = statistics.median(a.span * workers / a.trials - a.fit for a in alone)
    print(
        f"  one at a time, a trial's cost beyond its fit ({workers} x span / trials - mean "
        f"fit_seconds): {fixed * 1e3:.0f} ms"
    )


def fmt(values: list[float]) -> str:
    return ", ".join(f"{value:.4f}" for value in values)


@contextlib.contextmanager
def stopwatch_on(folder: Path) -> Iterator[None]:
    """Studies run meanwhile time their packed workers' per-trial calls into `folder`."""
    saved = {key: os.environ.get(key) for key in ("PYTHONPATH", "STUDY_STOPWATCH")}
    paths = [str(TOOLS / "stopwatch"), saved["PYTHONPATH"] or ""]
    os.environ["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    os.environ["STUDY_STOPWATCH"] = str(folder)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def bench_fixed_cost(folder: Path, overrides: list[str]) -> None:
    """What a packed worker spends per trial outside the pack's training steps, timed inside
    its per-trial calls: a few milliseconds each, steadier than the difference of two studies
    that vary by seconds here."""
    timings = folder / "timings"  # not the study's own folder
    timings.mkdir()
    with stopwatch_on(timings):
        timed_study(folder, "stopwatch", *overrides)
    workers = [json.loads(path.read_text()) for path in timings.glob("*.json")]
    trials = sum(worker["trials"] for worker in workers)
    spent = {name: sum(worker[name] for worker in workers) / trials for name in workers[0]}
    total = spent["open"] + spent["epoch"] + spent["close"]
    print(
        f"  packed, a trial's fixed cost on its pack's training path, timed inside its worker's "
        f"calls ({int(trials)} trials): {total * 1e3:.1f} ms (target <= 50 ms): taking it "
        f"{spent['open'] * 1e3:.1f} ms (the go, claim, sampling), per-epoch reports and "
        f"pruning checks {spent['epoch'] * 1e3:.1f} ms, freeing its slot "
        f"{spent['close'] * 1e3:.1f} ms; off the path, on the worker's writer thread, "
        f"{spent['writes'] * 1e3:.1f} ms (its MLflow run opened and closed: config files, "
        f"params, checkpoint, artifacts, the final write, tell)"
    )
    cpu = spent["open cpu"] + spent["epoch cpu"] + spent["close cpu"]
    print(
        f"    of which the training thread's own CPU time: {cpu * 1e3:.1f} ms (taking "
        f"{spent['open cpu'] * 1e3:.1f}, reports {spent['epoch cpu'] * 1e3:.1f}, freeing "
        f"{spent['close cpu'] * 1e3:.1f}); the rest waits on the journal's lock, the parent's "
        f"go-ahead, and a core or the GIL held by the other processes and the writer thread; the "
        f"writer thread's own CPU time {spent['writes cpu'] * 1e3:.1f} ms"
    )


def bench_steps(repeats: int, epochs: int = 30) -> None:
    """A packed member's share of a pack's step vs a solo trial's step (Lightning, fit()),
    in-process, both from whole `epochs`-epoch trainings (set-up and validation included)."""
    torch.set_num_threads(1)  # like a sweep worker
    with tempfile.TemporaryDirectory() as folder:
        for dropout in (0.0, 0.2):
            cfg = lecture_cfg(f"trainer.max_epochs={epochs}", f"model.dropout={dropout}")
            prepared = prepare_data(cfg)
            splits = prepared.splits
            steps = len(prepared.data.train_batches(splits)) * epochs  # per member
            batch_size = member_of(cfg).batch_size
            cases: dict[str, Callable[[], object]] = {
                "solo": functools.partial(fit, cfg, Path(folder), prepared=prepared)
            }
            cases |= {f"{k}": functools.partial(train_members, cfg, splits, k) for k in PACK_SIZES}
            best = fastest(interleaved(cases, repeats))
            solo_ms = best["solo"] / steps * 1e3
            print(
                f"lecture MLP, batch {batch_size}, dropout {dropout}, {epochs} epochs = "
                f"{steps} steps a member (fastest of {repeats} rounds): a solo step "
                f"{solo_ms:.3f} ms"
            )
            for k in PACK_SIZES:
                pack_ms = best[f"{k}"] / steps * 1e3
                print(
                    f"  K={k:<3} a pack step {pack_ms:7.3f} ms, a member's share "
                    f"{pack_ms / k:.3f} ms: {solo_ms * k / pack_ms:5.1f}x a solo step's speed"
                )


def train_members(cfg: DictConfig, splits: Splits, k: int) -> None:
    """`cfg` as k members of one pack (their own seeds, lr from 1e-3 to 1e-2), trained."""
    members = [
        dataclasses.replace(member_of(cfg), seed=i, lr=1e-3 * 10 ** (i / max(1, k - 1)))
        for i in range(k)
    ]
    arch = arch_of(cfg, splits.n_features, splits.n_outputs)
    train_pack(members, splits, arch, instantiate(cfg.optimizer), slots=k)


def plain_study(folder: Path, name: str, n_trials: int, epochs: int) -> float:
    """Wall time of tools/plain_study.py, the peer, run as a user runs a script; its MLflow
    store `name`.db is made by the first round and reused, as ours is."""
    command = [sys.executable, str(TOOLS / "plain_study.py"), f"sqlite:///{folder / name}.db"]
    start = time.perf_counter()
    subprocess.run(
        [*command, f"--trials={n_trials}", f"--epochs={epochs}"], check=True, capture_output=True
    )
    return time.perf_counter() - start


def bench_peer(rounds: int, n_trials: int = 20, epochs: int = 30) -> None:
    """The peer study end to end, ours vs the plain loop, in turns; the median ratio."""
    overrides = [*PEER, f"sweep.n_trials={n_trials}", f"trainer.max_epochs={epochs}"]
    ratios = []
    print(
        f"the peer study: breast cancer, MLP 64x64, {n_trials} trials x <= {epochs} epochs, "
        "lr/batch/dropout, TPE, median pruner; scripts/run.py -m sweep (default workers and "
        "pack) vs a plain PyTorch + Optuna loop in one process, one MLflow log_batch a trial:"
    )
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for index in range(rounds):
            times: dict[str, float] = {}
            for case in ("ours", "plain") if index % 2 == 0 else ("plain", "ours"):
                if case == "ours":
                    times[case] = timed_study(folder, f"peer{index}", *overrides).wall
                else:
                    times[case] = plain_study(folder, "plain", n_trials, epochs)
            ratios.append(times["ours"] / times["plain"])
            print(
                f"  round {index + 1}: ours {times['ours']:.1f} s, plain loop "
                f"{times['plain']:.1f} s: {ratios[-1]:.2f}x"
            )
    print(
        f"  wall time, ours vs the plain loop: {statistics.median(ratios):.2f}x (median of "
        f"{rounds} rounds; target <= 0.5x)"
    )

"""Benchmarks: ratios measured side by side in one process (absolute times vary by machine).

python tools/bench.py [startup] [input] [core] [sweep] [pg] [packed] [steps] [peer]
                     [quality] [study-start] [budget] [pack-sizes]
                     [--repeats N] [--rounds N] [--seeds N] [--trials N] [--epochs N]
                     [--postgres ADMIN_URL]

The packed trials' sections (packed, steps, peer) live in tools/bench_packed.py; time to quality,
a study's start and its time budget (quality, study-start, budget) in tools/bench_quality.py.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import optuna
import torch
from harness import Sweep, fastest, interleaved, lecture_cfg, trial_span
from mlflow.entities import Metric
from omegaconf import DictConfig

from study.data import Batches, PreparedData, prepare_data
from study.nets import mlp
from study.paths import SCRIPTS_DIR, database_url
from study.run import run_one
from study.run_log import RunLog
from study.sweep.backends import make_storage
from study.tracking import Store
from study.train import fit, seed_everything

SECTIONS = ["startup", "input", "core", "sweep", "pg", "packed", "steps", "peer"]
SECTIONS += ["quality", "study-start", "budget", "pack-sizes"]
# Bad input that needs no torch, Lightning or MLflow: each must be answered in seconds.
CONFIG_ONLY_INPUTS = [
    ["optimizer.lr=nan"],
    ["seed=-1"],
    ["tracking.uri=ftp://x"],
    ["data=csv", "data.target=y", "data.path=/no/such.csv"],
    ["-m", "sweep", "sweep.n_trials=0"],
    ["-m", "sweep", "sweep.sampler=bogus"],
    ["-m", "sweep", "sweep.storage=foo://bar"],
    ["-m", "sweep", "sweep.storage=/tmp"],
    ["-m", "sweep", "sweep.study_name=../../x"],
    ["-m", "sweep", "sweep.metric=val/nope"],
    ["-m", "sweep", "sweep.devices=[7]"],
    ["-m", "sweep", "search=wide", "optimizer.lr=inf"],
]
NO_STORE = "sqlite:////no/such/mlflow.db"
OTHER_SCRIPTS_INPUTS = [  # (script, arguments): the other commands' config-only input
    ("reproduce.py", ["0" * 32, "--tracking-uri", NO_STORE]),
    ("reproduce.py", ["0" * 32, "--tracking-uri", "ftp://x"]),
    ("compare.py", ["a", "b", "--output", "x.txt"]),
    ("compare.py", ["a", "b", "--tracking-uri", NO_STORE]),
    ("ui.py", ["--port", "70000"]),
    ("ui.py", ["--tracking-uri", NO_STORE]),
]


def plain_torch_fit(cfg: DictConfig, prepared: PreparedData) -> int:
    """The reference: a hand-written PyTorch loop over the same model, data and batches."""
    seed_everything(int(cfg.seed))
    splits = prepared.splits
    net = mlp(
        splits.n_features,
        splits.n_outputs,
        list(cfg.model.hidden_sizes),
        cfg.model.activation,
        float(cfg.model.dropout),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=float(cfg.optimizer.lr))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    batches = Batches(splits.train, int(cfg.data.batch_size), shuffle=True, seed=int(cfg.seed))
    steps = 0
    for _ in range(int(cfg.trainer.max_epochs)):
        net.train()
        total = torch.zeros(())
        for x, y in batches:
            optimizer.zero_grad()
            loss = loss_fn(net(x).squeeze(1), y.float())
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(y)
            steps += 1
        net.eval()
        with torch.no_grad():
            val_loss = loss_fn(net(splits.val.x).squeeze(1), splits.val.y.float())
        _ = (total / len(splits.train)).item(), val_loss.item()
    return steps


def first_line_seconds(*args: str, cwd: Path) -> tuple[float, str]:
    """Seconds from starting `scripts/run.py args` to its first line (stdout or stderr), and
    that line; the process is stopped there."""
    started = time.perf_counter()
    with subprocess.Popen(
        [sys.executable, str(SCRIPTS_DIR / "run.py"), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        assert process.stdout is not None
        line = process.stdout.readline()
        elapsed = time.perf_counter() - started
        process.kill()
    return elapsed, line.strip()


def bench_startup(repeats: int) -> None:
    """Time to first output of a newcomer's commands: a run, and a config-only bad input."""
    cases = {
        "python scripts/run.py (the plan line)": [],
        "python scripts/run.py optimizer.lr=-1 (the error line)": ["optimizer.lr=-1"],
    }
    with tempfile.TemporaryDirectory() as folder:
        store = f"tracking.uri=sqlite:///{Path(folder) / 'mlflow.db'}"
        times: dict[str, list[float]] = {name: [] for name in cases}
        lines: dict[str, str] = {}
        for _ in range(repeats):
            for name, args in cases.items():
                elapsed, lines[name] = first_line_seconds(*args, store, cwd=Path(folder))
                times[name].append(elapsed)
    print(f"time to first output, seconds (fastest of {repeats}, median):")
    for name, values in times.items():
        print(f"  {name:<56} {min(values):5.2f}  {statistics.median(values):5.2f}")
        print(f"    {lines[name][:90]}")


def bench_core(repeats: int) -> None:
    torch.set_num_threads(1)  # like a sweep worker; also steadier timings
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"

        # The default lecture run (50 epochs), on the default class size and a larger one.
        for students in (400, 2000):
            data = f"data.n_samples={students}"
            cfg = lecture_cfg("trainer.max_epochs=50", data, tracking_uri=uri)
            longer = lecture_cfg("trainer.max_epochs=100", data, tracking_uri=uri)
            prepared = prepare_data(cfg)
            steps = len(prepared.data.train_batches(prepared.splits)) * 50
            run_one(cfg, root / "warmup")  # the store's first-use costs out of the figures
            t = interleaved(
                {
                    "ours": functools.partial(fit, cfg, root / "fit", prepared=prepared),
                    "plain": functools.partial(plain_torch_fit, cfg, prepared),
                    "ours 100": functools.partial(fit, longer, root / "fit", prepared=prepared),
                    "plain 100": functools.partial(plain_torch_fit, longer, prepared),
                },
                repeats,
            )
            # Per step from the 100-epoch fits: their fixed costs (~12 ms of Trainer set-up,
            # best checkpoint, test metrics) spread over twice the steps. A difference of the
            # 50- and 100-epoch times would leave them out, but is too noisy here.
            best = fastest(t)
            ours_ms, plain_ms = (
                best[name] / (2 * steps) * 1e3 for name in ("ours 100", "plain 100")
            )
            print(
                f"lecture MLP {list(cfg.model.hidden_sizes)}, {students} students, batch "
                f"{cfg.data.batch_size}, 50 epochs = {steps} steps (fastest of {repeats} rounds):"
            )
            print(
                f"  per step incl. per-epoch validation (100-epoch fits, set-up included): our "
                f"fit() {ours_ms:.3f} ms, plain PyTorch loop {plain_ms:.3f} ms: "
                f"{ours_ms / plain_ms:.2f}x (target <= 1.3x)"
            )
            print(
                f"  the whole 50-epoch fit(): {best['ours']:.3f} s vs {best['plain']:.3f} s: "
                f"{best['ours'] / best['plain']:.2f}x"
            )
            bench_tracking(cfg, prepared, root, uri, repeats)


class TimedRunLog(RunLog):
    """The real metrics log with a stopwatch on its calls: a few milliseconds measured inside
    one run, instead of the difference of two runs that vary by tens of milliseconds here."""

    seconds = 0.0

    def epoch_ended(self, history: Sequence[Mapping[str, float]]) -> None:
        start = time.perf_counter()
        super().epoch_ended(history)
        self.seconds += time.perf_counter() - start

    def finish(
        self,
        values: Mapping[str, float],
        tags: Mapping[str, str],
        history: Sequence[Mapping[str, float]] = (),
        series: Sequence[Metric] = (),
    ) -> None:
        start = time.perf_counter()
        super().finish(values, tags, history, series)
        self.seconds += time.perf_counter() - start


def bench_tracking(
    cfg: DictConfig, prepared: PreparedData, root: Path, uri: str, repeats: int
) -> None:
    """What tracking adds to a 50-epoch fit: the per-epoch curves (buffered or one write per
    epoch), the run's one final write, and the whole tracked run."""
    store = Store.from_uri(uri)
    client = store.client()
    experiment_id = store.experiment_id(client, "bench")
    run_ids = [client.create_run(experiment_id).info.run_id for _ in range(3 * repeats + 3)]
    in_tracking: dict[str, list[float]] = {"final write only": [], "buffered": [], "per epoch": []}

    def tracked_fit(case: str, flush_every_s: float | None) -> None:
        # As run_one does it, the run created beforehand: the curves buffered by its RunLog
        # (None: no curves), then one write of what is left, the final metrics and the tags.
        curves = TimedRunLog(client, run_ids.pop(), flush_every_s or 0.0)
        with curves:
            log = curves if flush_every_s is not None else None
            result = fit(cfg, root / "logged", prepared, log=log)
            curves.finish(result.summary(), {"fit": result.diagnosis.verdict})
        in_tracking[case].append(curves.seconds)

    t = interleaved(
        {
            "bare": functools.partial(fit, cfg, root / "bare", prepared=prepared),
            **{
                case: functools.partial(tracked_fit, case, flush)
                for case, flush in (
                    ("final write only", None),
                    ("buffered", 5.0),
                    ("per epoch", 0.0),
                )
            },
            "whole": functools.partial(run_one, cfg, root / "whole"),
        },
        repeats,
    )
    # The logger's own calls take milliseconds and vary in proportion: their median.
    spent = {case: statistics.median(seconds) for case, seconds in in_tracking.items()}
    wall = fastest(t)
    curves_share = (spent["buffered"] - spent["final write only"]) / wall["buffered"]
    per_epoch_share = (spent["per epoch"] - spent["final write only"]) / wall["per epoch"]
    print(
        f"  per-epoch metric logging, buffered: {curves_share:.1%} of the "
        f"{wall['buffered']:.2f} s run (target <= 5%); one write per epoch instead: "
        f"{per_epoch_share:.1%}; with the run's final metrics and tags, in the same write: "
        f"{spent['buffered'] / wall['buffered']:.1%} (time inside the logger's calls)"
    )
    print(
        f"  the whole tracked run ({wall['whole']:.2f} s) vs the untracked fit, side by side: "
        f"{1 - wall['bare'] / wall['whole']:.1%}, {wall['whole'] - wall['buffered']:.3f} s of "
        "it fixed per run (run, params, plot, artifacts)"
    )


def run_study(
    folder: Path, name: str, *overrides: str, storage: str | None = None
) -> optuna.Study:
    """A real `scripts/run.py -m sweep` in a subprocess; returns the finished study."""
    return Sweep(folder, name, *overrides, storage=storage).run_to_end()


def steady_rate(study: optuna.Study) -> float:
    """Trials per minute while every worker was running trials: from the moment the last
    worker to get going started its first trial to the moment the first to run out finished
    its last. The span left out (workers still importing, the last trial running alone)
    belongs to a study's start and end, not to how fast workers turn trials over."""
    by_worker: dict[object, list[optuna.trial.FrozenTrial]] = {}
    for trial in study.trials:
        by_worker.setdefault(trial.user_attrs.get("pid"), []).append(trial)
    start = max(min(t.datetime_start for t in ts if t.datetime_start) for ts in by_worker.values())
    end = min(
        max(t.datetime_complete for t in ts if t.datetime_complete) for ts in by_worker.values()
    )
    inside = [
        t
        for t in study.trials
        if t.datetime_start and t.datetime_complete
        if start <= t.datetime_start and t.datetime_complete <= end
    ]
    return len(inside) / (end - start).total_seconds() * 60


def bench_sweep(rounds: int, seeds: int) -> None:
    """1 vs 2 workers in turns, `rounds` times: a busy neighbour on this machine can swing one
    study by 20%, so each round gives a ratio and the figure is their median."""
    n_trials = 40
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        ratios, steady_ratios, fixed_costs = [], [], []
        for index in range(rounds):
            rates, steady = {}, {}
            for workers in (1, 2):
                study = run_study(
                    folder,
                    f"workers{workers}_{index}",
                    f"sweep.workers={workers}",
                    f"sweep.n_trials={n_trials}",
                    "sweep.sampler=random",
                    "sweep.pruner=none",
                    "trainer.max_epochs=20",
                    "trainer.early_stopping.enabled=false",
                )
                rates[workers] = len(study.trials) / trial_span(study) * 60
                steady[workers] = steady_rate(study)
                if workers == 1:
                    fit = statistics.mean(t.user_attrs["fit_seconds"] for t in study.trials)
                    per_trial = trial_span(study) / len(study.trials)
                    fixed_costs.append(per_trial - fit)
            ratios.append(rates[2] / rates[1])
            steady_ratios.append(steady[2] / steady[1])
            print(
                f"  round {index + 1}: 1 worker {rates[1]:.1f} trials/min, 2 workers "
                f"{rates[2]:.1f} ({ratios[-1]:.2f}x; every worker busy: "
                f"{steady_ratios[-1]:.2f}x); a trial {per_trial:.3f} s, {fit:.3f} s of it in fit"
            )
        print(
            f"study throughput, lecture MLP, {n_trials} trials x 20 epochs, 2 vs 1 worker: "
            f"{statistics.median(ratios):.2f}x (median of {rounds} rounds; target >= 1.7x), "
            f"{statistics.median(steady_ratios):.2f}x while every worker is busy"
        )
        print(
            f"fixed cost per trial beyond its training steps (1 worker): "
            f"{statistics.median(fixed_costs):.3f} s (target <= 0.3 s)"
        )
        bench_pruning(folder, seeds)


def bench_pruning(folder: Path, seeds: int) -> None:
    """30-trial studies with the median pruner and without, at the same seeds. Parallel
    studies are not deterministic (workers interleave differently each time), so one seed
    says little about the best value: the spread of the unpruned studies over seeds is the
    noise the pruned studies' best values are judged against."""
    figures: dict[str, list[tuple[int, float, int]]] = {"median": [], "none": []}
    for seed in range(1, seeds + 1):
        for pruner in figures:
            study = run_study(
                folder,
                f"pruner_{pruner}_{seed}",
                f"sweep.pruner={pruner}",
                "sweep.n_trials=30",
                "sweep.workers=2",
                f"sweep.seed={seed}",
                "trainer.max_epochs=40",
                "trainer.early_stopping.enabled=false",
            )
            epochs = sum(int(t.user_attrs.get("epochs", 0)) for t in study.trials)
            pruned = sum(t.state.name == "PRUNED" for t in study.trials)
            figures[pruner].append((epochs, study.best_value, pruned))
    print(f"30-trial studies x 40 epochs, 2 workers, TPE, seeds 1-{seeds}:")
    for seed, (with_, without) in enumerate(zip(*figures.values(), strict=True), start=1):
        print(
            f"  seed {seed}: median pruner {with_[0]} epochs ({with_[2]} pruned), best "
            f"{with_[1]:.4f}; no pruner {without[0]} epochs, best {without[1]:.4f}"
        )
    trained = {name: sum(row[0] for row in rows) for name, rows in figures.items()}
    best = {name: [row[1] for row in rows] for name, rows in figures.items()}
    noise = statistics.stdev(best["none"]) if seeds > 1 else float("nan")
    print(
        f"  median pruner: {1 - trained['median'] / trained['none']:.0%} fewer epochs "
        f"(target >= 40%); mean best val/loss {statistics.mean(best['median']):.4f} vs "
        f"{statistics.mean(best['none']):.4f} without pruning (seed-to-seed spread of the "
        f"unpruned studies: {noise:.4f})"
    )


@contextlib.contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """A new PostgreSQL database (its URL) for one benchmark, dropped afterwards."""
    import sqlalchemy

    name = f"study_bench_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(
        database_url(admin_url), isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool
    )
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield str(sqlalchemy.engine.make_url(admin_url).set(database=name).render_as_string(False))
    finally:
        with engine.connect() as connection:
            connection.execute(
                sqlalchemy.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))


def storage_calls_per_trial(storage_url: str, n_trials: int, epochs: int) -> float:
    """Seconds a worker spends in the storage for one trial, replaying its calls (claim under
    the study lock, heartbeat, 3 suggestions, a report and a pruning check per epoch, its
    user attrs, tell, re-read) on the same kind of study (TPE, no pruner), no training."""
    from study.sweep.backends import StudyLock, make_pruner, make_sampler
    from study.sweep.claims import claim_trial

    name = f"replay_{uuid.uuid4().hex[:6]}"
    storage = make_storage(storage_url)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler("tpe", 0),
        pruner=make_pruner("none", epochs),
    )
    lock = StudyLock(storage_url, name)
    start = time.perf_counter()
    for _ in range(n_trials):
        trial = claim_trial(study, storage, n_trials, lock)
        assert trial is not None
        trial.set_user_attr("device", "cpu")
        lr = trial.suggest_float("optimizer.lr", 1e-4, 1e-1, log=True)
        trial.suggest_categorical("data.batch_size", [16, 32, 64, 128])
        trial.suggest_float("model.dropout", 0.0, 0.5)
        for key in ("overrides", "output_dir"):
            trial.set_user_attr(key, key)
        for epoch in range(epochs):
            trial.report(lr / (epoch + 1), epoch)
            trial.should_prune()
        for key in ("mlflow_run_id", "device", "epochs", "fit_seconds"):
            trial.set_user_attr(key, 1)
        study.tell(trial, lr)
        study.get_trials(deepcopy=False)
    return (time.perf_counter() - start) / n_trials


def bench_pg(admin_url: str, rounds: int = 2) -> None:
    """The same study (2 workers) on PostgreSQL and on the default journal file, in turns so
    that a busy machine slows both alike; medians over the rounds."""
    epochs, n_trials = 20, 12
    common = [
        "sweep.workers=2",
        f"sweep.n_trials={n_trials}",
        "sweep.pruner=none",
        f"trainer.max_epochs={epochs}",
        "trainer.early_stopping.enabled=false",
    ]
    figures: dict[str, list[tuple[float, float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as folder_name, scratch_database(admin_url) as url:
        folder = Path(folder_name)
        for index in range(rounds):
            for label, storage in (
                ("journal file", str(folder / f"{index}.journal")),
                ("PostgreSQL", url),
            ):
                name = f"{label.split()[0].lower()}{index}"
                study = run_study(folder, name, *common, storage=storage)
                trials, span = study.trials, trial_span(study)
                wall = statistics.mean(
                    (t.datetime_complete - t.datetime_start).total_seconds()  # type: ignore[operator]
                    for t in trials
                )
                fit_s = statistics.mean(t.user_attrs["fit_seconds"] for t in trials)
                in_storage = storage_calls_per_trial(storage, n_trials, epochs)
                figures.setdefault(label, []).append(
                    (len(trials) / span * 60, wall, fit_s, in_storage)
                )
    print(
        f"storage, lecture MLP, {n_trials} trials x {epochs} epochs, 2 workers, TPE "
        f"(median of {rounds} rounds):"
    )
    for label, rows in figures.items():
        rate, wall, fit_s, in_storage = (
            statistics.median(column) for column in zip(*rows, strict=True)
        )
        print(
            f"  {label:<12} {rate:5.1f} trials/min; a trial {wall:.3f} s, {fit_s:.3f} s in fit, "
            f"{wall - fit_s:.3f} s outside it; its storage calls {in_storage * 1e3:.0f} ms = "
            f"{in_storage / wall:.1%} of the trial"
        )


def bench_input() -> None:
    """Seconds from each command's start to its one error line, for config-only input."""
    import subprocess

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    cases = [("run.py", args) for args in CONFIG_ONLY_INPUTS] + OTHER_SCRIPTS_INPUTS
    print("bad input answered before heavy imports (seconds per process, target <= 2):")
    with tempfile.TemporaryDirectory() as folder:
        for script, args in cases:
            start = time.perf_counter()
            result = subprocess.run(
                [sys.executable, str(scripts / script), *args],
                cwd=folder,
                capture_output=True,
                text=True,
            )
            seconds = time.perf_counter() - start
            line = result.stderr.strip().splitlines()[-1][:60] if result.stderr.strip() else ""
            command = " ".join([script, *args])[:52]
            print(f"  {seconds:5.2f} s  exit {result.returncode}  {command:<52} {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sections", nargs="*", help=f"any of {SECTIONS} (default: all)")
    parser.add_argument(
        "--repeats", type=int, default=9, help="startup, core, steps: rounds of timings"
    )
    parser.add_argument("--rounds", type=int, default=3, help="sweep, peer: rounds of studies")
    parser.add_argument(
        "--seeds",
        type=int,
        default=5,
        help="sweep: pruning studies per pruner; packed: rounds, one sampler seed each",
    )
    parser.add_argument("--trials", type=int, default=64, help="packed: trials a study")
    parser.add_argument("--epochs", type=int, default=50, help="packed: trainer.max_epochs")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="pg: a PostgreSQL URL allowed to create (and drop) a scratch database",
    )
    args = parser.parse_args(argv)
    sections = args.sections or SECTIONS
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section {sorted(unknown)}: use any of {SECTIONS}")
    if "startup" in sections:
        bench_startup(args.repeats)
    if "core" in sections:
        bench_core(args.repeats)
    if "sweep" in sections:
        bench_sweep(args.rounds, args.seeds)
    if "pg" in sections:
        bench_pg(args.postgres)
    if {"packed", "steps", "peer"} & set(sections):
        from bench_packed import bench_packed, bench_peer, bench_steps

        if "packed" in sections:
            bench_packed(args.seeds, args.trials, args.epochs)
        if "steps" in sections:
            bench_steps(args.repeats)
        if "peer" in sections:
            bench_peer(args.rounds)
    if {"quality", "study-start", "budget", "pack-sizes"} & set(sections):
        from bench_quality import bench_budget, bench_pack_sizes, bench_quality, bench_study_start

        if "study-start" in sections:
            bench_study_start(args.rounds)
        if "quality" in sections:
            bench_quality()
        if "budget" in sections:
            bench_budget()
        if "pack-sizes" in sections:
            bench_pack_sizes(args.seeds)
    if "input" in sections:
        bench_input()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmarks: ratios measured side by side in one process (absolute times vary by machine).

python scripts/bench.py [core] [sweep] [pg] [--repeats N] [--postgres ADMIN_URL]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from study.cli import CONF_DIR
from study.data import Batches
from study.experiment import resolved_config, run_one
from study.harness import Sweep, trial_span
from study.live_metrics import MetricsLogger
from study.nets import mlp
from study.paths import database_url
from study.search import make_storage
from study.tracking import Store
from study.train import PreparedData, fit, prepare_data, seed_everything
from study.validate import validate

SECTIONS = ["core", "sweep", "pg"]


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


def timed(function: Callable[..., object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def bench_core(repeats: int) -> None:
    torch.set_num_threads(1)  # like a sweep worker; also steadier timings
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"

        # The default lecture run (50 epochs), on the default class size and a larger one.
        for students in (400, 2000):
            data = f"data.n_samples={students}"
            cfg = lecture_cfg("trainer.max_epochs=50", data, tracking_uri=uri)
            prepared = prepare_data(cfg)
            steps = len(prepared.data.train_batches(prepared.splits)) * 50
            run_one(cfg, root / "warmup")  # first-call costs and the store out of the figures
            ours, plain = step_times(cfg, prepared, root, repeats)
            ours_ms, plain_ms = (statistics.median(t) / steps * 1e3 for t in (ours, plain))
            print(
                f"lecture MLP {list(cfg.model.hidden_sizes)}, {students} students, batch "
                f"{cfg.data.batch_size}, 50 epochs = {steps} steps:"
            )
            print(
                f"  per step incl. per-epoch validation: our fit() {ours_ms:.3f} ms, plain "
                f"PyTorch loop {plain_ms:.3f} ms: {ours_ms / plain_ms:.2f}x (target <= 1.3x)"
            )
            bench_tracking(cfg, prepared, root, uri, repeats)


def step_times(
    cfg: DictConfig, prepared: PreparedData, root: Path, repeats: int
) -> tuple[list[float], list[float]]:
    """Wall times of our fit() and of the plain loop, interleaved so drift hits both alike."""
    ours: list[float] = []
    plain: list[float] = []
    for i in range(repeats):
        ours.append(timed(lambda i=i: fit(cfg, root / f"fit{i}", prepared=prepared)))
        plain.append(timed(lambda: plain_torch_fit(cfg, prepared)))
    return ours, plain


def bench_tracking(
    cfg: DictConfig, prepared: PreparedData, root: Path, uri: str, repeats: int
) -> None:
    """Untracked fit vs buffered metric logging vs one write per epoch vs the whole run."""
    store = Store.from_config(uri)
    client = store.client()
    experiment_id = store.experiment_id(client, "bench")

    def logged_fit(flush_every_s: float, index: int) -> None:
        run_id = client.create_run(experiment_id).info.run_id
        fit(cfg, root / f"l{index}", [MetricsLogger(client, run_id, flush_every_s)], prepared)

    bare: list[float] = []
    buffered: list[float] = []
    unbuffered: list[float] = []
    whole: list[float] = []
    for i in range(repeats):
        bare.append(timed(lambda i=i: fit(cfg, root / f"u{i}", prepared=prepared)))
        buffered.append(timed(lambda i=i: logged_fit(5.0, i)))
        unbuffered.append(timed(lambda i=i: logged_fit(0.0, i)))
        whole.append(timed(lambda i=i: run_one(cfg, root / f"t{i}")))
    bare_s, buffered_s, unbuffered_s, whole_s = (
        statistics.median(t) for t in (bare, buffered, unbuffered, whole)
    )
    print(
        f"  metric logging, buffered: {1 - bare_s / buffered_s:.1%} of the "
        f"{bare_s:.2f} s run (target <= 5%); one write per epoch instead: "
        f"{1 - bare_s / unbuffered_s:.1%}"
    )
    print(
        f"  whole run tracked ({whole_s:.2f} s): {1 - bare_s / whole_s:.1%} in all, "
        f"{whole_s - buffered_s:.3f} s of it fixed per run (run, params, plot, artifacts)"
    )


def run_study(
    folder: Path, name: str, *overrides: str, storage: str | None = None
) -> optuna.Study:
    """A real `scripts/run.py -m sweep` in a subprocess; returns the finished study."""
    return Sweep(folder, name, *overrides, storage=storage).run_to_end()


def bench_sweep() -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        common = [
            "sweep.sampler=random",
            "sweep.pruner=none",
            "trainer.max_epochs=20",
            "trainer.early_stopping.enabled=false",
        ]
        rates = {}
        for workers in (1, 2):
            study = run_study(
                folder,
                f"workers{workers}",
                f"sweep.workers={workers}",
                "sweep.n_trials=10",
                *common,
            )
            rates[workers] = len(study.trials) / trial_span(study) * 60
            if workers == 1:
                fit = statistics.mean(t.user_attrs["fit_seconds"] for t in study.trials)
                per_trial = trial_span(study) / len(study.trials)
        print(
            f"study throughput, lecture MLP, 10 trials x 20 epochs: 1 worker "
            f"{rates[1]:.1f} trials/min, 2 workers {rates[2]:.1f} trials/min: "
            f"{rates[2] / rates[1]:.2f}x (target >= 1.7x)"
        )
        print(
            f"fixed cost per trial beyond its training steps (1 worker): "
            f"{per_trial - fit:.3f} s ({per_trial:.3f} s per trial, {fit:.3f} s in fit) "
            "(target <= 0.3 s)"
        )

        pruning = {}
        for pruner in ("median", "none"):
            study = run_study(
                folder,
                f"pruner_{pruner}",
                f"sweep.pruner={pruner}",
                "sweep.n_trials=30",
                "sweep.workers=2",
                "sweep.seed=7",
                "trainer.max_epochs=40",
                "trainer.early_stopping.enabled=false",
            )
            epochs = sum(int(t.user_attrs.get("epochs", 0)) for t in study.trials)
            pruned = sum(t.state.name == "PRUNED" for t in study.trials)
            pruning[pruner] = (epochs, study.best_value, pruned)
        (with_epochs, with_best, pruned), (without_epochs, without_best, _) = (
            pruning["median"],
            pruning["none"],
        )
        print(
            f"30-trial study, seed 7, 2 workers: median pruner {with_epochs} epochs "
            f"({pruned} pruned), best val/loss {with_best:.4f}; no pruner {without_epochs} "
            f"epochs, best {without_best:.4f}: {1 - with_epochs / without_epochs:.0%} fewer "
            "epochs (target >= 40%)"
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
    from study.quota import StudyLock, claim_trial
    from study.search import make_pruner, make_sampler

    name = f"replay_{uuid.uuid4().hex[:6]}"
    study = optuna.create_study(
        study_name=name,
        storage=make_storage(storage_url),
        sampler=make_sampler("tpe", 0),
        pruner=make_pruner("none", epochs),
    )
    lock = StudyLock(storage_url, name)
    start = time.perf_counter()
    for _ in range(n_trials):
        trial = claim_trial(study, n_trials, lock)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sections", nargs="*", help=f"any of {SECTIONS} (default: all)")
    parser.add_argument("--repeats", type=int, default=5)
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
    if "core" in sections:
        bench_core(args.repeats)
    if "sweep" in sections:
        bench_sweep()
    if "pg" in sections:
        bench_pg(args.postgres)
    return 0

"""Benchmarks: ratios measured side by side in one process (absolute times vary by machine).

python scripts/bench.py [core] [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from study.cli import CONF_DIR
from study.data import Batches
from study.experiment import resolved_config, run_one
from study.nets import mlp
from study.paths import PROJECT_ROOT
from study.search import make_storage
from study.tracking import MetricsLogger, Store
from study.train import PreparedData, fit, prepare_data, seed_everything
from study.validate import validate

SECTIONS = ["core", "sweep"]


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


def median_of(repeats: int, function: Callable[[], object]) -> float:
    return statistics.median(timed(function) for _ in range(repeats))


def bench_core(repeats: int) -> None:
    torch.set_num_threads(1)  # like a sweep worker; also steadier timings
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"

        cfg = lecture_cfg("trainer.max_epochs=30")
        prepared = prepare_data(cfg)
        steps = len(prepared.data.train_batches(prepared.splits)) * 30
        fit(cfg, root / "warmup", prepared=prepared)  # first-call costs out of the figures
        ours: list[float] = []
        plain: list[float] = []
        for index in range(repeats):  # interleaved, so drift hits both alike
            ours.append(timed(lambda i=index: fit(cfg, root / f"fit{i}", prepared=prepared)))
            plain.append(timed(lambda: plain_torch_fit(cfg, prepared)))
        ours_ms, plain_ms = (statistics.median(t) / steps * 1e3 for t in (ours, plain))
        print(
            f"per-step cost, lecture MLP {list(cfg.model.hidden_sizes)}, batch "
            f"{cfg.data.batch_size}, {steps} steps incl. per-epoch validation:"
        )
        print(
            f"  our fit() {ours_ms:.3f} ms/step  plain PyTorch loop {plain_ms:.3f} ms/step  "
            f"ratio {ours_ms / plain_ms:.2f}x (target <= 1.3x)"
        )

        cfg50 = lecture_cfg("trainer.max_epochs=50", tracking_uri=uri)
        prepared50 = prepare_data(cfg50)
        run_one(cfg50, root / "warmup-run")  # creates the store and experiment once
        store = Store.from_config(uri)
        client = store.client()
        experiment_id = store.experiment_id(client, "bench")

        def logged_fit(flush_every_s: float, index: int) -> None:
            run_id = client.create_run(experiment_id).info.run_id
            logger = MetricsLogger(client, run_id, flush_every_s)
            fit(cfg50, root / f"l{index}", [logger], prepared50)

        bare: list[float] = []
        buffered: list[float] = []
        unbuffered: list[float] = []
        whole: list[float] = []
        for i in range(repeats):
            bare.append(timed(lambda i=i: fit(cfg50, root / f"u{i}", prepared=prepared50)))
            buffered.append(timed(lambda i=i: logged_fit(5.0, i)))
            unbuffered.append(timed(lambda i=i: logged_fit(0.0, i)))
            whole.append(timed(lambda i=i: run_one(cfg50, root / f"t{i}")))
        bare_s, buffered_s, unbuffered_s, whole_s = (
            statistics.median(t) for t in (bare, buffered, unbuffered, whole)
        )
        print(f"tracking, 50-epoch lecture run ({bare_s:.2f} s untracked):")
        print(
            f"  per-epoch metric logging, buffered: {1 - bare_s / buffered_s:.1%} of the run "
            f"(target <= 5%); one write per epoch instead: {1 - bare_s / unbuffered_s:.1%}"
        )
        print(
            f"  whole run tracked: {whole_s:.2f} s, of which {whole_s - buffered_s:.3f} s "
            "fixed per-run cost (run, params, curves plot, artifacts, final status): "
            f"{1 - bare_s / whole_s:.1%} of this run in all"
        )


def run_study(folder: Path, name: str, *overrides: str) -> optuna.Study:
    """A real `scripts/run.py -m sweep` in a subprocess; returns the finished study."""
    storage = folder / f"{name}.journal"
    command = [
        sys.executable,
        str(PROJECT_ROOT / "scripts" / "run.py"),
        "-m",
        "sweep",
        f"sweep.study_name={name}",
        f"sweep.storage={storage}",
        f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
        f"hydra.sweep.dir={folder / name}",
        *overrides,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=folder)
    if completed.returncode != 0:
        raise SystemExit(
            f"study {name} failed:\n{completed.stdout[-2000:]}{completed.stderr[-2000:]}"
        )
    return optuna.load_study(study_name=name, storage=make_storage(str(storage)))


def trial_span(study: optuna.Study) -> float:
    """Seconds from the first trial's start to the last one's end: worker start-up excluded."""
    trials = [t for t in study.trials if t.datetime_start and t.datetime_complete]
    first = min(t.datetime_start for t in trials if t.datetime_start)
    last = max(t.datetime_complete for t in trials if t.datetime_complete)
    return (last - first).total_seconds()


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sections", nargs="*", help=f"any of {SECTIONS} (default: all)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    sections = args.sections or SECTIONS
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section {sorted(unknown)}: use any of {SECTIONS}")
    if "core" in sections:
        bench_core(args.repeats)
    if "sweep" in sections:
        bench_sweep()
    return 0

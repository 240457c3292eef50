"""Benchmarks: ratios measured side by side in one process (absolute times vary by machine).

python scripts/bench.py [core] [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from study.cli import CONF_DIR
from study.data import Batches
from study.experiment import resolved_config, run_one
from study.nets import mlp
from study.train import PreparedData, fit, prepare_data, seed_everything
from study.validate import validate

SECTIONS = ["core"]


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
        untracked: list[float] = []
        tracked: list[float] = []
        for index in range(repeats):
            untracked.append(
                timed(lambda i=index: fit(cfg50, root / f"u{i}", prepared=prepared50))
            )
            tracked.append(timed(lambda i=index: run_one(cfg50, root / f"t{i}")))
        share = 1 - statistics.median(untracked) / statistics.median(tracked)
        print(
            f"tracking overhead, 50-epoch lecture run ({statistics.median(tracked):.2f} s "
            f"tracked vs {statistics.median(untracked):.2f} s untracked): "
            f"{share:.1%} of the run (target <= 5%)"
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
    return 0

"""GPU check: a short study with sweep.workers=auto at trials_per_gpu 1 and 4.

python tools/gpu_check.py [--trials 16] [--epochs 10]

Confirms every trial trained on a GPU and prints the study throughput of 4 vs 1 trials per GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from harness import Sweep, trial_span


def run_study(
    folder: Path, trials_per_gpu: int, trials: int, epochs: int, extra: list[str]
) -> tuple[float, list[str]]:
    """Run one study; return its trials per minute and the device each trial ran on."""
    sweep = Sweep(
        folder,
        f"gpu_check_{trials_per_gpu}",
        f"sweep.n_trials={trials}",
        "sweep.workers=auto",
        f"sweep.trials_per_gpu={trials_per_gpu}",
        "sweep.pruner=none",
        "trainer.accelerator=gpu",
        f"trainer.max_epochs={epochs}",
        "trainer.early_stopping.enabled=false",
        *extra,
    )
    started = time.perf_counter()
    study = sweep.run_to_end()
    wall = time.perf_counter() - started
    finished = [t for t in study.trials if t.datetime_complete is not None]
    span = trial_span(study)
    devices = [str(t.user_attrs.get("device", "?")) for t in finished]
    print(
        f"trials_per_gpu={trials_per_gpu}: {len(finished)} trials in {span:.1f} s of trials "
        f"({wall:.1f} s wall incl. start-up) = {len(finished) / span * 60:.1f} trials/min; "
        f"devices: {sorted(set(devices))}"
    )
    return len(finished) / span * 60, devices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("overrides", nargs="*", default=["data.n_samples=4000"])
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no GPU visible: nothing to check")
        return 1
    print(f"{torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}")
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        one, devices_one = run_study(folder, 1, args.trials, args.epochs, args.overrides)
        four, devices_four = run_study(folder, 4, args.trials, args.epochs, args.overrides)
    on_gpu = all(device.startswith("cuda") for device in devices_one + devices_four)
    print(f"every trial trained on a GPU: {'yes' if on_gpu else 'NO'}")
    print(f"throughput, 4 vs 1 trials per GPU: {four / one:.2f}x")
    return 0 if on_gpu else 1


if __name__ == "__main__":
    sys.exit(main())

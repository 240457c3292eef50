"""GPU check: packed trials vs one trial per GPU, on one GPU (figures, never asserted).

python tools/gpu_check.py [--trials 512] [--baseline-trials 32] [--epochs 20] [OVERRIDE ...]

Runs the lecture MLP study on GPU 0 twice: `sweep.pack=auto` (`--trials` trials, packed up to
256 at a time) and `sweep.pack=1 sweep.trials_per_gpu=1` (one trial at a time, on
`--baseline-trials` trials: 512 of them would take the 5 minutes alone; a rate is a rate).
Every trial trains every epoch (no pruner, no early stopping) so both do the same work a trial;
20 epochs instead of the lecture's 50 keep the whole script under 5 minutes. Prints trials per
minute over the trials' span and end to end, the ratio (target >= 30x), and whether every
trial's MLflow run records a GPU (its `device` tag starts with cuda). Exits 1 without a GPU or
when a run did not train on one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from harness import Sweep, trial_span


def run_study(
    folder: Path, name: str, trials: int, epochs: int, extra: list[str]
) -> tuple[float, float]:
    """Run one study on GPU 0; print its figures; return its trials per minute over the trials'
    span and end to end."""
    sweep = Sweep(
        folder,
        name,
        f"sweep.n_trials={trials}",
        "sweep.workers=auto",
        "sweep.devices=[0]",
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
    trial_runs = [run for run in sweep.runs() if "trial_number" in run.data.tags]
    devices = [run.data.tags.get("device", "?") for run in trial_runs]
    on_gpu = len(trial_runs) == len(finished) and all(d.startswith("cuda") for d in devices)
    print(
        f"{name}: {len(finished)} trials in {span:.1f} s from first to last "
        f"= {len(finished) / span * 60:.0f} trials/min ({wall:.1f} s wall, "
        f"{len(finished) / wall * 60:.0f} trials/min end to end); {len(trial_runs)} trial runs, "
        f"devices {sorted(set(devices))}: {'every one on a GPU' if on_gpu else 'NOT all on a GPU'}"
    )
    if not on_gpu:
        raise SystemExit(f"{name}: a trial's run does not record a GPU")
    return len(finished) / span * 60, len(finished) / wall * 60


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=512, help="packed study's trials")
    parser.add_argument(
        "--baseline-trials", type=int, default=32, help="one-trial-per-GPU study's trials"
    )
    parser.add_argument("--epochs", type=int, default=20, help="trainer.max_epochs")
    parser.add_argument("overrides", nargs="*", help="more overrides for both studies")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False): run it on a "
              "GPU machine", file=sys.stderr)  # fmt: skip
        return 1
    print(f"GPU 0 of {torch.cuda.device_count()}: {torch.cuda.get_device_name(0)}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        packed = run_study(folder, "packed", args.trials, args.epochs, args.overrides)
        one = run_study(
            folder,
            "one_per_gpu",
            args.baseline_trials,
            args.epochs,
            ["sweep.pack=1", "sweep.trials_per_gpu=1", *args.overrides],
        )
    print(
        f"throughput, packed vs one trial per GPU: {packed[0] / one[0]:.1f}x over the trials' "
        f"span (target >= 30x; end to end, start-up is spread over {args.trials} vs "
        f"{args.baseline_trials} trials: {packed[1] / one[1]:.1f}x); "
        f"the whole check {time.perf_counter() - started:.0f} s (target < 300 s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a sweep's workers run: device slots (a CUDA device each, or the CPU), the GPUs this
process can see, and the torch threads each worker gets."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.errors import UserError


@dataclass(frozen=True)
class DeviceSlot:
    """One worker's place: a CUDA device id (as CUDA_VISIBLE_DEVICES sees it) or the CPU."""

    index: int
    device: str | None

    @property
    def label(self) -> str:
        return f"cuda {self.device}" if self.device is not None else "cpu"


def visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [
            item.strip() for item in listed.split(",") if item.strip() and item.strip() != "-1"
        ]
    if not any(Path("/dev").glob("nvidia[0-9]*")) and not Path("/dev/dxg").exists():
        return []  # no NVIDIA device node (WSL has /dev/dxg): no need to import torch (~3 s)
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def device_slots(
    workers: int | str, trials_per_gpu: int, devices: Sequence[Any] | None = None
) -> list[DeviceSlot]:
    """Slots for `workers` (a number, or auto: GPUs x trials_per_gpu, else one per core)."""
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int)):
        raise UserError(f"sweep.workers={workers!r} is not allowed: use auto or a number >= 1")
    if isinstance(workers, int) and workers < 1:
        raise UserError(f"sweep.workers={workers} is out of range: use auto or a number >= 1")
    if (
        isinstance(trials_per_gpu, bool)
        or not isinstance(trials_per_gpu, int)
        or trials_per_gpu < 1
    ):
        raise UserError(f"sweep.trials_per_gpu={trials_per_gpu!r} is out of range: must be >= 1")
    gpus = [str(device) for device in devices] if devices is not None else visible_gpus()
    if gpus:
        per_gpu = [gpu for _ in range(trials_per_gpu) for gpu in gpus]  # spread before sharing
        count = len(per_gpu) if workers == "auto" else int(workers)
        return [DeviceSlot(index, per_gpu[index % len(per_gpu)]) for index in range(count)]
    count = (os.cpu_count() or 1) if workers == "auto" else int(workers)
    return [DeviceSlot(index, None) for index in range(count)]


def threads_per_worker(n_workers: int) -> int:
    """Torch threads per worker so that all workers together use each core once."""
    return max(1, (os.cpu_count() or 1) // n_workers)

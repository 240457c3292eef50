"""A run's data, loaded, split and standardized on its training device.

Free of Lightning, like the packed engine, so that a packed worker never imports Lightning
(~5 s a process here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from study.data import Splits, TabularData
from study.errors import UserError
from study.task import model_task


@dataclass
class PreparedData:
    data: TabularData
    splits: Splits


def resolve_device(accelerator: str) -> torch.device:
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible here: "
            "use trainer.accelerator=auto or cpu"
        )
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    return torch.device("cpu")


def prepare_data(cfg: DictConfig) -> PreparedData:
    """Load, split and standardize the data on the training device; UserError if unusable."""
    try:
        data: TabularData = instantiate(cfg.data)
    except InstantiationException as error:  # Hydra wraps what the constructor raised
        if isinstance(error.__cause__, UserError):
            raise error.__cause__ from None
        raise
    task = model_task(str(cfg.model._target_)).name
    return PreparedData(data, data.prepare(task, resolve_device(cfg.trainer.accelerator)))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index or 0
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)

"""A run's data, loaded, split and standardized on its training device.

Free of Lightning, like the packed engine, so that a packed worker never imports Lightning
(~5 s a process here); free of torch until tensors are made, so that a sweep checks its data
(check_data) before it writes anything or imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from study.data.tables import Splits, Standardized, TabularData
from study.errors import UserError
from study.task import model_task

if TYPE_CHECKING:
    import torch


@dataclass
class PreparedData:
    data: TabularData
    splits: Splits


def resolve_device(accelerator: str) -> torch.device:
    import torch

    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible here: "
            "use trainer.accelerator=auto or cpu"
        )
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    return torch.device("cpu")


def instantiate_data(cfg: DictConfig) -> TabularData:
    try:
        return instantiate(cfg.data)  # type: ignore[no-any-return]
    except InstantiationException as error:  # Hydra wraps what the constructor raised
        if isinstance(error.__cause__, UserError):
            raise error.__cause__ from None
        raise


def check_data(cfg: DictConfig) -> tuple[TabularData, Standardized]:
    """The run's data loaded, split and standardized in numpy, with every check a run makes of
    it (no torch); UserError if unusable."""
    data = instantiate_data(cfg)
    return data, data.check(model_task(str(cfg.model._target_)).name)


def precheck_data(cfg: DictConfig) -> Standardized | None:
    """The data checks a sweep makes before it writes anything: those of a single run (no
    torch), except for bundled data sets known good (their task only)."""
    return instantiate_data(cfg).precheck(model_task(str(cfg.model._target_)).name)


def record_classes(cfg: DictConfig, checked: Standardized | None) -> None:
    """Text class labels (yes/no) in `cfg` as `data.classes`, in class-id order: the config a
    run logs then rebuilds the same class ids whatever the labels it meets."""
    if checked is not None and checked.table.classes and "classes" in cfg.data:
        cfg.data.classes = OmegaConf.create(list(checked.table.classes))


def prepare_data(cfg: DictConfig) -> PreparedData:
    """Load, split and standardize the data on the training device; UserError if unusable.
    Text class labels are recorded in `cfg` (record_classes)."""
    data, checked = check_data(cfg)
    device = resolve_device(cfg.trainer.accelerator)
    record_classes(cfg, checked)
    return PreparedData(data, checked.to_splits(device))


def device_name(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        index = device.index or 0
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)

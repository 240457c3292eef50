"""Compose a primary config of conf/ with overrides, inside or outside a running Hydra app."""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig


def compose_config(conf_dir: str, config_name: str, overrides: Sequence[str]) -> DictConfig:
    if GlobalHydra.instance().is_initialized():  # inside hydra.main: reuse its config search path
        return compose(config_name, overrides=list(overrides))
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        return compose(config_name, overrides=list(overrides))

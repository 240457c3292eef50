"""Configs: compose a primary config of conf/, check it once at the boundary, resolve it.

Each check failure is a UserError naming the key, the value and what is allowed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from study.diagnosis import Thresholds
from study.errors import UserError
from study.nets import ACTIVATIONS
from study.paths import choose_tracking_uri
from study.secrets import redact

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
ENGINES = ("single", "packed")
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
_TRACKING_URI = re.compile(
    r"^(sqlite:///|(postgresql|mysql|mssql)(\+\w+)?://|https?://|databricks)"
)


def check_tracking_uri(uri: str | None, source: str = "tracking.uri") -> None:
    """UserError unless `uri` is empty (the project's store) or a store MLflow can use;
    `source` names where it came from (tracking.uri, MLFLOW_TRACKING_URI)."""
    if uri and not _TRACKING_URI.match(uri):
        raise UserError(
            f"{source}={redact(uri)!r} is not a tracking store MLflow can use: give "
            "sqlite:///path/to/mlflow.db, http(s)://host:port or a database URL"
        )


def compose_config(conf_dir: str, config_name: str, overrides: Sequence[str]) -> DictConfig:
    """`config_name` of `conf_dir` with `overrides`, inside or outside a running Hydra app."""
    if GlobalHydra.instance().is_initialized():  # inside hydra.main: reuse its config search path
        return compose(config_name, overrides=list(overrides))
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def resolved_config(cfg: DictConfig) -> DictConfig:
    """The run's config with interpolations resolved and Hydra's own settings left out."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    return OmegaConf.create(plain)


def _fail(key: str, value: Any, allowed: str) -> UserError:
    return UserError(f"{key}={value!r} is out of range: {allowed}")


def _number(cfg: DictConfig, key: str) -> float:
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"{key}={value!r} is not a number: set it to a number")
    return float(value)


def _integer(cfg: DictConfig, key: str) -> int:
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{key}={value!r} is not a whole number: set it to an integer")
    return value


def _positive(cfg: DictConfig, key: str) -> None:
    if _number(cfg, key) <= 0:
        raise _fail(key, OmegaConf.select(cfg, key), "must be > 0")


def _at_least(cfg: DictConfig, key: str, low: int) -> None:
    if _integer(cfg, key) < low:
        raise _fail(key, OmegaConf.select(cfg, key), f"must be an integer >= {low}")


def _fraction(cfg: DictConfig, key: str, low_open: bool = False) -> float:
    value = _number(cfg, key)
    if not (0 < value < 1 if low_open else 0 <= value < 1):
        raise _fail(key, value, "must be in (0, 1)" if low_open else "must be in [0, 1)")
    return value


def validate(cfg: DictConfig) -> None:
    """Raise UserError for the first value a run cannot use."""
    try:
        _validate(cfg)
    except OmegaConfBaseException as error:  # e.g. a required value (???) left unset
        key = getattr(error, "full_key", "") or "a key"
        raise UserError(f"{key} must be set: {str(error).splitlines()[0]}") from error


def _missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    missing = []
    for key in map(str, cfg):
        if not prefix and key == "hydra":
            continue  # Hydra's own node: job-time values are filled in per job
        if OmegaConf.is_missing(cfg, key):
            missing.append(f"{prefix}{key}")
        elif isinstance(cfg[key], DictConfig):
            missing += _missing_keys(cfg[key], f"{prefix}{key}.")
    return missing


def _floats(node: DictConfig | ListConfig, prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every float value set in `node` with its key; interpolations are not resolved."""
    items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else enumerate(node)
    for key, value in items:
        name = f"{prefix}{key!s}"
        if name == "hydra":
            continue
        if isinstance(value, DictConfig | ListConfig):
            yield from _floats(value, f"{name}.")
        elif isinstance(value, float):
            yield name, value


def _validate(cfg: DictConfig) -> None:
    missing = _missing_keys(cfg)
    if missing:
        raise UserError(f"{missing[0]} must be set: add {missing[0]}=... to the command")
    for key, value in _floats(cfg):
        if not math.isfinite(value):
            raise UserError(f"{key}={value} is not a finite number: set it to a number")
    if not 0 <= _integer(cfg, "seed") <= MAX_SEED:
        raise _fail("seed", cfg.seed, f"must be in [0, {MAX_SEED}]")
    _positive(cfg, "optimizer.lr")
    if "weight_decay" in cfg.optimizer and _number(cfg, "optimizer.weight_decay") < 0:
        raise _fail("optimizer.weight_decay", cfg.optimizer.weight_decay, "must be >= 0")
    if "momentum" in cfg.optimizer:
        _fraction(cfg, "optimizer.momentum")

    _at_least(cfg, "data.batch_size", 1)
    val = _fraction(cfg, "data.val_fraction", low_open=True)
    test = _fraction(cfg, "data.test_fraction", low_open=True)
    if val + test >= 0.9:
        raise _fail(
            "data.val_fraction + data.test_fraction", round(val + test, 6), "must be < 0.9"
        )
    if "n_samples" in cfg.data:
        _at_least(cfg, "data.n_samples", 10)
    if "noise" in cfg.data and _number(cfg, "data.noise") < 0:
        raise _fail("data.noise", cfg.data.noise, "must be >= 0")

    hidden = cfg.model.hidden_sizes
    if not isinstance(hidden, ListConfig) or len(hidden) == 0:
        raise _fail("model.hidden_sizes", _plain(hidden), "must be a non-empty list like [32, 32]")
    if any(isinstance(size, bool) or not isinstance(size, int) or size < 1 for size in hidden):
        raise _fail("model.hidden_sizes", _plain(hidden), "each size must be an integer >= 1")
    if cfg.model.activation not in ACTIVATIONS:
        allowed = f"use one of {', '.join(ACTIVATIONS)}"
        raise _fail("model.activation", cfg.model.activation, allowed)
    _fraction(cfg, "model.dropout")

    _at_least(cfg, "trainer.max_epochs", 1)
    if cfg.trainer.get("engine", "single") not in ENGINES:
        raise _fail("trainer.engine", cfg.trainer.engine, f"use one of {', '.join(ENGINES)}")
    if cfg.trainer.accelerator not in ACCELERATORS:
        raise _fail(
            "trainer.accelerator", cfg.trainer.accelerator, f"use one of {', '.join(ACCELERATORS)}"
        )
    if cfg.trainer.early_stopping.enabled:
        _at_least(cfg, "trainer.early_stopping.patience", 1)
        if _number(cfg, "trainer.early_stopping.min_delta") < 0:
            raise _fail(
                "trainer.early_stopping.min_delta", cfg.trainer.early_stopping.min_delta, ">= 0"
            )
    _positive(cfg, "tracking.flush_every_s")
    tracking = choose_tracking_uri(cfg.tracking.get("uri"))
    check_tracking_uri(tracking.uri, tracking.source)
    if "path" in cfg.data and not Path(str(cfg.data.path)).expanduser().is_file():
        raise UserError(f"data.path={cfg.data.path} does not exist: give the path of a CSV file")
    Thresholds.from_config(cfg.get("diagnosis"))


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value


# The modules whose classes our configs build with `_target_` (see conf/). A config read back
# from a store may have been edited by anyone who can write there: it may name only these.
TRUSTED_MODULES = ("study.data", "study.models", "torch.optim")


def check_stored_config(cfg: DictConfig, source: str) -> None:
    """UserError unless every `_target_` in `cfg` is a class of TRUSTED_MODULES.

    A logged config is resolved, so an interpolation (`${oc.env:...}`) is refused as well: it
    would read the environment of whoever reruns the run.
    """
    _check_node(OmegaConf.to_container(cfg, resolve=False), source, "")


def _check_node(node: Any, source: str, path: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}{key}"
            if key == "_target_" and not _trusted_class(value):
                raise UserError(
                    f"{source}: {where}={value!r} is not a class of "
                    f"{', '.join(f'{m}.*' for m in TRUSTED_MODULES)}: refusing to build it "
                    "(the config was edited after it was logged)"
                )
            _check_node(value, source, f"{where}.")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            _check_node(item, source, f"{path}{index}.")
    elif isinstance(node, str) and "${" in node:
        raise UserError(
            f"{source}: {path.rstrip('.')}={node!r} is an interpolation; a logged config is "
            "resolved (the config was edited after it was logged)"
        )


def _trusted_class(target: object) -> bool:
    """Whether `target` names a class defined in a trusted module (not one it imported)."""
    import importlib

    if not isinstance(target, str):
        return False
    module_name, _, name = target.rpartition(".")
    if module_name not in TRUSTED_MODULES or not name.isidentifier() or name.startswith("_"):
        return False
    found = getattr(importlib.import_module(module_name), name, None)
    return isinstance(found, type) and (
        found.__module__ == module_name or found.__module__.startswith(f"{module_name}.")
    )

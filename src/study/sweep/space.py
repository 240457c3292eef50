"""The search space: config paths and their distributions, read from the `search` config.

A search space is keyed by config path, each entry a distribution with its scale:

    search:
      optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
      data.batch_size: {type: categorical, choices: [16, 32, 64, 128]}
      optimizer: {type: categorical, choices: [adam, sgd]}   # a config group: picks a file

A sampled value is set on the trial's config as a value; a sampled config group is composed
like `optimizer=sgd` on the command line. Either way the trial's overrides rerun it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from study.errors import UserError


@dataclass(frozen=True)
class Param:
    """One searched config path and its distribution."""

    path: str
    distribution: optuna.distributions.BaseDistribution
    is_group: bool  # `optimizer: {choices: [adam, sgd]}` selects a config file, not a value

    def suggest(self, trial: optuna.Trial) -> Any:
        """Sample this path's value for `trial` (a group's value is the name of its option)."""
        d = self.distribution
        if isinstance(d, optuna.distributions.FloatDistribution):
            return trial.suggest_float(self.path, d.low, d.high, log=d.log)
        if isinstance(d, optuna.distributions.IntDistribution):
            return trial.suggest_int(self.path, d.low, d.high, log=d.log)
        assert isinstance(d, optuna.distributions.CategoricalDistribution)
        return choice_value(trial.suggest_categorical(self.path, d.choices))

    def override(self, value: Any) -> str:
        """The command-line override that sets `value` (shown to users, reruns the trial)."""
        return f"{self.path}={_choice_text(value)}"


def choice_value(choice: Any) -> Any:
    """A categorical choice as the config holds it: `[32,32]` (Optuna stores scalars) -> list."""
    return yaml.safe_load(choice) if isinstance(choice, str) and choice.startswith("[") else choice


def _choice_text(value: Any) -> Any:
    """Optuna choices are scalars: a list choice (hidden sizes) travels as its override text."""
    if isinstance(value, ListConfig | list):
        return "[" + ",".join(str(item) for item in value) + "]"
    return value


def parse_space(
    space: Mapping[str, Any], cfg: DictConfig, group_choices: Mapping[str, Any]
) -> list[Param]:
    """The search space as Params; UserError naming the entry for anything unusable."""
    params = []
    for path, spec in space.items():
        where = f"search.{path}"
        is_group = path in group_choices and not isinstance(
            OmegaConf.select(cfg, path), int | float
        )
        if not is_group and OmegaConf.select(cfg, path, default="<missing>") == "<missing>":
            raise UserError(
                f"{where}: {path!r} is not a config path of this run: search existing keys "
                "(e.g. optimizer.lr, data.batch_size, model.dropout) or config groups (optimizer)"
            )
        if not isinstance(spec, Mapping | DictConfig):
            raise UserError(f"{where} must be a mapping like {{type: float, low: 0.0, high: 0.5}}")
        kind = spec.get("type")
        if kind == "categorical":
            choices = spec.get("choices")
            if not choices:
                raise UserError(f"{where}.choices is empty: list at least one value")
            distribution: optuna.distributions.BaseDistribution = (
                optuna.distributions.CategoricalDistribution([_choice_text(c) for c in choices])
            )
        elif kind in ("float", "int"):
            low, high, log = spec.get("low"), spec.get("high"), bool(spec.get("log", False))
            if not isinstance(low, int | float) or not isinstance(high, int | float):
                raise UserError(f"{where} needs numeric low and high")
            if low >= high:
                raise UserError(f"{where}: low={low} must be < high={high}")
            if log and low <= 0:
                raise UserError(f"{where}: a log scale needs low > 0 (got low={low})")
            if kind == "float":
                distribution = optuna.distributions.FloatDistribution(
                    float(low), float(high), log=log
                )
            else:
                distribution = optuna.distributions.IntDistribution(int(low), int(high), log=log)
        else:
            raise UserError(f"{where}.type={kind!r} is unknown: use float, int or categorical")
        params.append(Param(path, distribution, is_group))
    if not params:
        raise UserError("search is empty: add at least one config path to search")
    return params


def range_ends(params: list[Param]) -> list[list[tuple[Param, Any]]]:
    """Value sets at the ends of every range: each must make a valid run config."""
    ends: list[list[tuple[Param, Any]]] = [[], []]
    for param in params:
        distribution = param.distribution
        if isinstance(distribution, optuna.distributions.CategoricalDistribution):
            ends += [[(param, choice_value(choice))] for choice in distribution.choices]
        else:
            ends[0].append((param, distribution.low))  # type: ignore[attr-defined]
            ends[1].append((param, distribution.high))  # type: ignore[attr-defined]
    return [values for values in ends if values]


def trial_base_config(cfg: DictConfig, study_name: str) -> DictConfig:
    """A study's composed config as its trials' run config: the sweep's own sections left out,
    runs tracked in the study's experiment."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(plain, dict)
    for section in ("sweep", "search", "hydra"):
        plain.pop(section, None)
    trial_cfg = OmegaConf.create(plain)
    trial_cfg.tracking.experiment = study_name
    return trial_cfg


def set_values(cfg: DictConfig, values: list[tuple[Param, Any]]) -> DictConfig:
    """A copy of `cfg` with the sampled values of value params set (groups are composed)."""
    trial_cfg = copy.deepcopy(cfg)
    for param, value in values:
        if not param.is_group:
            OmegaConf.update(trial_cfg, param.path, value, merge=False)
    return trial_cfg

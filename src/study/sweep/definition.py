"""What a study means: recorded on the study when it is created, compared when it resumes.

A study's trials are comparable only if they share their data, model, search space, metric and
direction. The definition is the trials' base config (study.sweep.space.trial_base_config) with
the settings that may change between sessions left out, plus the search space, the metric, the
direction and, for a CSV, the sha256 of its bytes (the file may move or change in place).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from optuna.distributions import distribution_to_json

from study.errors import UserError
from study.sweep.space import Param

DEFINITION_ATTR = "definition"  # the study's user attribute: a JSON object of dotted keys

# Where and how a trial runs, not what it computes: they may change when a study resumes (a GPU
# host and a CPU host may share one study).
_RUN_SETTINGS = ("tracking", "trainer.progress_bar", "trainer.accelerator")


def study_definition(
    base_config: DictConfig,
    params: list[Param],
    metric: str,
    direction: str,
    group_choices: Mapping[str, Any],
) -> dict[str, Any]:
    """The study's definition as dotted keys, in the order differences are reported: the
    config groups chosen (data=lecture) first, as a user typed them."""
    config = OmegaConf.to_container(base_config, resolve=True)
    assert isinstance(config, dict)
    data = config.get("data", {})
    if "path" in data:  # a CSV: its bytes define it, wherever it lies
        csv = Path(data.pop("path")).expanduser()
        data["sha256"] = hashlib.sha256(csv.read_bytes()).hexdigest()
    flat = {
        **{
            group: choice
            for group, choice in group_choices.items()
            if choice is not None and not group.startswith("hydra")
        },
        "sweep.metric": metric,
        "sweep.direction": direction,
        **{f"search.{p.path}": distribution_to_json(p.distribution) for p in params},
        **_flatten(config),
    }
    return {
        key: value
        for key, value in flat.items()
        if not any(key == s or key.startswith(f"{s}.") for s in _RUN_SETTINGS)
    }


def _flatten(node: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys, a level's own values before its sections (`seed` before `data.seed`)."""
    flat = {f"{prefix}{k}": v for k, v in node.items() if not isinstance(v, Mapping)}
    for key, value in node.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def encode(definition: dict[str, Any]) -> str:
    return json.dumps(definition)


def check_same_study(study_name: str, recorded: str, definition: dict[str, Any]) -> None:
    """UserError naming the first key where `definition` differs from the `recorded` one."""
    before = json.loads(recorded)
    now = json.loads(encode(definition))  # as recorded: JSON types (tuples are lists)
    for key in [*now, *(key for key in before if key not in now)]:
        # A key added to the configs since the study began, at its default null, means the same.
        if before.get(key) is None and now.get(key) is None:
            continue
        if key not in before or key not in now or before[key] != now[key]:
            raise UserError(
                f"study {study_name!r} was created with {key}={_shown(before, key)}, this "
                f"command has {key}={_shown(now, key)}: start a new study with "
                "sweep.study_name=NAME, or extend this one by rerunning its own command with a "
                "higher sweep.n_trials"
            )


def _shown(definition: dict[str, Any], key: str) -> str:
    if key not in definition:
        return "<unset>"
    value = definition[key]
    return value if isinstance(value, str) else json.dumps(value)

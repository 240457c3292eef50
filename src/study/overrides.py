"""Command-line overrides a config does not define: refused with the nearest known name, and
search ranges changed in the form users type (`search.model.dropout.high=0.3`).

Hydra's own advice for an unknown key is "append it with +key=value": for a misspelled key that
adds a setting no code reads (`+sweep.n_trial=5` ran 20 trials), or one the code chokes on
(`+optimizer.learning_rate=0.1`). Both are refused here, before anything is written.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from study.errors import UserError

# Sections whose keys are checked elsewhere: Hydra's own (by Hydra), a search space (by
# study.sweep.space.parse_space: its keys are config paths).
UNCHECKED_SECTIONS = ("hydra", "search")
_ABSENT = object()
# The fields of one search range: `search.model.dropout.high=0.3` sets a field of the range of
# `model.dropout`, not a key `model` of `search`.
RANGE_FIELDS = ("type", "low", "high", "log", "step", "choices")
_NOT_IN_STRUCT = re.compile(r"Could not override '([^']+)'")


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def is_added(override: str) -> bool:
    return override.startswith("+") and "=" in override


def search_overrides(argv: Sequence[str]) -> list[str]:
    """`argv` with each `search.PATH.FIELD=value` made `++search.PATH.FIELD=value`: a search
    space is keyed by dotted config paths (`model.dropout`), which Hydra's grammar cannot name,
    so the value lands in nested keys that study.sweep.space merges back into the range."""
    return [
        f"++{arg}" if arg.startswith("search.") and "=" in arg and "/" not in arg else arg
        for arg in argv
    ]


def nested_space(space: Mapping[str, Any]) -> dict[str, Any]:
    """A search space whose ranges may have been set through nested keys (`search.model.dropout
    .high=0.3` gives {"model": {"dropout": {"high": 0.3}}}), back as {"model.dropout": {...}}:
    a nested field changes the range it names, a nested whole range (with a type) replaces it."""
    flat: dict[str, Any] = {}
    patches: list[tuple[str, dict[str, Any]]] = []

    def split(node: Mapping[str, Any], path: str, top: bool) -> None:
        fields = {k: v for k, v in node.items() if k in RANGE_FIELDS or not isinstance(v, Mapping)}
        if top:
            flat[path] = fields
        elif fields:
            patches.append((path, fields))
        for key, value in node.items():
            if key not in fields and isinstance(value, Mapping):
                split(value, f"{path}.{key}", top=False)

    for key, value in space.items():
        if isinstance(value, Mapping):
            split(value, str(key), top=True)
        else:
            flat[str(key)] = value  # not a mapping: parse_space says so
    for path, fields in patches:  # after every range written whole, whatever their order
        flat[path] = fields if "type" in fields else {**(flat.get(path) or {}), **fields}
    return {path: spec for path, spec in flat.items() if spec != {}}


def nearest_name(cfg: DictConfig, key: str) -> str:
    """How to name `key` right: "did you mean X?", or the keys of the section it is in."""
    parts = key.split(".")
    node: Any = cfg
    depth = 0
    for part in parts[:-1]:
        child = node.get(part) if isinstance(node, DictConfig) else None
        if not isinstance(child, DictConfig):
            break
        node, depth = child, depth + 1
    prefix = ".".join(parts[:depth])
    known = [str(k) for k in node if not str(k).startswith("_") and str(k) != "hydra"]
    known += [k for k in _keywords(node) if k not in known]
    close = difflib.get_close_matches(parts[depth], known, n=1, cutoff=0.6)
    if close:
        return f"did you mean {'.'.join([*parts[:depth], close[0], *parts[depth + 1 :]])}?"
    where = prefix or "the config"
    return f"the keys of {where} are {', '.join(known)}"


def _keywords(node: DictConfig) -> list[str]:
    """The keyword arguments of the class a config section builds (`_target_`), if any."""
    target = node.get("_target_")
    if not isinstance(target, str) or "." not in target:
        return []
    module_name, _, name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return []
    names: list[str] = []
    for klass in inspect.getmro(cls) if inspect.isclass(cls) else []:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = list(inspect.signature(init).parameters.values())[1:]
        names += [  # those with a default: the others are passed by the code (params)
            p.name
            for p in parameters
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
            and p.default is not p.empty
            and p.name not in names
        ]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break  # no **kwargs handed on to a base class
    return names


def check_added_keys(
    overrides: Sequence[str], defined: DictConfig, groups: Mapping[str, Any]
) -> None:
    """UserError for a `+key=value` that `defined` (the config without the added keys) does
    not have, unless the class its section builds takes it (`+optimizer.amsgrad=true`)."""
    for override in overrides:
        key = override_key(override)
        if not is_added(override) or key in groups or key.split(".")[0] in UNCHECKED_SECTIONS:
            continue
        if OmegaConf.select(defined, key, default=_ABSENT) is not _ABSENT:
            continue
        section, _, leaf = key.rpartition(".")
        node = OmegaConf.select(defined, section, default=None) if section else defined
        if isinstance(node, DictConfig) and leaf in _keywords(node):
            continue
        raise UserError(
            f"{override}: {key} is not a key of this config ({nearest_name(defined, key)}); "
            "nothing reads an added key"
        )


def refuse_unknown_added_keys(
    overrides: Sequence[str], conf_dir: str, config_name: str, groups: Mapping[str, Any]
) -> None:
    """check_added_keys against the config composed without the added keys (only when there
    are some: composing costs ~0.2 s)."""
    added = [
        o
        for o in overrides
        if is_added(o)
        and override_key(o) not in groups
        and override_key(o).split(".")[0] not in UNCHECKED_SECTIONS
    ]
    if not added:
        return
    from study.config import compose_config

    defined = compose_config(conf_dir, config_name, [o for o in overrides if o not in added])
    check_added_keys(added, defined, groups)


def refused_key(error: BaseException) -> str | None:
    """The key of Hydra's "Could not override 'KEY'... not in struct" error; None for any
    other error."""
    found = _NOT_IN_STRUCT.search(str(error))
    if found is None or "not in struct" not in str(error.__cause__ or ""):
        return None
    return found.group(1)


def not_in_struct_hint(key: str, defined: DictConfig) -> str:
    """One line for a key the config lacks, naming the nearest known key instead of Hydra's
    advice to add it with +."""
    return f"{key} is not a key of this config: {nearest_name(defined, key)}"

"""A sweep's plan: every setting, the search space and each range end checked before anything
is written."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from study.config import compose_config, validate
from study.errors import UserError
from study.sweep.backends import PRUNERS, SAMPLERS, default_storage
from study.sweep.pool import Slot, device_slots, threads_per_worker
from study.sweep.space import Param, parse_space, range_ends, set_values, trial_base_config


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep needs, checked before anything is written."""

    study_name: str
    n_trials: int
    storage_url: str
    sampler: str
    pruner: str
    seed: int
    direction: str
    metric: str
    max_failures: int
    retries: int
    heartbeat_s: int
    pack: int  # trials a worker trains at once as one packed model
    threads: int
    slots: list[Slot]
    params: list[Param]
    base_config: DictConfig  # a trial's run config before its sampled values are set
    overrides: list[str]
    config_name: str
    conf_dir: str
    sweep_dir: Path
    max_epochs: int


# What may differ between the members of a pack: one architecture, optimizer and data per pack.
PACKABLE = ("optimizer.lr", "optimizer.weight_decay", "model.dropout", "data.batch_size")
# The most trials a worker packs by itself: where a pack of small MLPs stops gaining (measured
# on 2 CPU cores: 16 -> 64 members still gained ~2x); wide layers make each member's matmuls
# big enough that a pack of many only queues work.
AUTO_PACK = {"cpu": 64, "gpu": 256}
WIDE_LAYER = 256
# Trials that train side by side cannot learn from each other: with the whole study in flight
# at once (64 trials, 32 per worker), TPE sampled blind and every seed's best value was worse
# than one at a time. Packs of a quarter of the study leave the sampler and the pruner
# three rounds of finished trials to learn from.
GENERATIONS = 4


def pack_size(
    setting: Any, cfg: DictConfig, params: list[Param], n_trials: int, slots: list[Slot]
) -> int:
    """`sweep.pack`: a number, or auto (a quarter of the study's trials spread over the workers,
    up to a cap for the device; 1 where the search space changes what a pack must share)."""
    unpackable = [param.path for param in params if param.is_group or param.path not in PACKABLE]
    if setting == "auto":
        if unpackable:
            return 1
        cap = AUTO_PACK["gpu" if slots[0].device is not None else "cpu"]
        if max(cfg.model.hidden_sizes) >= WIDE_LAYER:
            cap //= 8
        return max(1, min(cap, -(-n_trials // (GENERATIONS * len(slots)))))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise UserError(f"sweep.pack={setting!r} is out of range: use auto or an integer >= 1")
    if setting > 1 and unpackable:
        raise UserError(
            f"sweep.pack={setting}: trials that search {unpackable[0]} cannot share a pack "
            f"(members share their architecture, optimizer and data; they may differ in "
            f"{', '.join(PACKABLE)}): use sweep.pack=1 or auto"
        )
    return setting


def _positive_int(settings: DictConfig, key: str) -> int:
    value = settings.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"sweep.{key}={value!r} is out of range: must be an integer >= 1")
    return value


def plan_sweep(
    cfg: DictConfig,
    overrides: Sequence[str],
    conf_dir: str,
    config_name: str,
    sweep_dir: Path,
    group_choices: dict[str, Any],
) -> SweepPlan:
    """Check the sweep settings, the search space and every range end; UserError if unusable."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    sweeping = [o.input_line for o in parsed if o.is_sweep_override()]
    if sweeping:
        raise UserError(
            f"{sweeping[0]!r} is a Hydra sweep: with the study sweeper put ranges in "
            "search.* (or use hydra/sweeper=basic for a grid)"
        )
    settings = cfg.sweep
    if settings.sampler not in SAMPLERS:
        raise UserError(
            f"sweep.sampler={settings.sampler!r} is unknown: use one of {', '.join(SAMPLERS)}"
        )
    if str(settings.pruner) not in PRUNERS:
        raise UserError(
            f"sweep.pruner={settings.pruner!r} is unknown: use one of {', '.join(PRUNERS)}"
        )
    if settings.direction not in ("minimize", "maximize"):
        raise UserError(f"sweep.direction={settings.direction!r}: use minimize or maximize")
    n_trials = _positive_int(settings, "n_trials")
    max_failures = _positive_int(settings, "max_failures")
    retries = settings.get("retries", 1)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise UserError(f"sweep.retries={retries!r} is out of range: must be an integer >= 0")
    heartbeat_s = _positive_int(settings, "heartbeat_s")
    slots = device_slots(settings.workers, settings.trials_per_gpu, settings.devices)
    if cfg.trainer.accelerator in ("gpu", "cuda") and all(slot.device is None for slot in slots):
        raise UserError(
            f"trainer.accelerator={cfg.trainer.accelerator} but no CUDA GPU is visible here: "
            "use trainer.accelerator=auto or cpu (or list GPUs in sweep.devices)"
        )
    threads = settings.get("threads_per_worker", 1)
    if threads == "auto":
        threads = threads_per_worker(len(slots))
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(
            f"sweep.threads_per_worker={threads!r} is out of range: use auto or an integer >= 1"
        )
    validate(cfg)
    params = parse_space(OmegaConf.to_container(cfg.search), cfg, group_choices)  # type: ignore[arg-type]
    for values in range_ends(params):
        shown = " ".join(param.override(value) for param, value in values)
        groups = [param.override(value) for param, value in values if param.is_group]
        try:
            # Composing costs ~0.15 s: only a config group's option needs it.
            composed = (
                compose_config(conf_dir, config_name, [*overrides, *groups]) if groups else cfg
            )
            validate(set_values(composed, values))
        except UserError as error:
            raise UserError(f"search: the range end {shown} is unusable: {error}") from error
        except Exception as error:
            first = str(error).splitlines()[0]
            raise UserError(f"search: {shown} does not compose: {first}") from error
    return SweepPlan(
        study_name=str(settings.study_name),
        n_trials=n_trials,
        storage_url=str(settings.storage or default_storage(settings.study_name)),
        sampler=str(settings.sampler),
        pruner=str(settings.pruner),
        seed=int(settings.seed),
        direction=str(settings.direction),
        metric=str(settings.metric),
        max_failures=max_failures,
        retries=retries,
        heartbeat_s=heartbeat_s,
        pack=pack_size(settings.get("pack", 1), cfg, params, n_trials, slots),
        threads=threads,
        slots=slots,
        params=params,
        base_config=trial_base_config(cfg, str(settings.study_name)),
        overrides=list(overrides),
        config_name=config_name,
        conf_dir=conf_dir,
        sweep_dir=sweep_dir,
        max_epochs=int(cfg.trainer.max_epochs),
    )

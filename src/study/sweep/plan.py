"""A sweep's plan: every setting, the search space and each range end checked before anything
is written."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from study.config import compose_config, validate
from study.data import precheck_data, record_classes
from study.errors import UserError
from study.overrides import nested_space, refuse_unknown_added_keys
from study.sweep.backends import PRUNERS, SAMPLERS, check_storage_url, default_storage
from study.sweep.budget import check_timeout
from study.sweep.definition import study_definition
from study.sweep.devices import DeviceSlot, device_slots, threads_per_worker, visible_gpus
from study.sweep.space import Param, parse_space, range_ends, set_values, trial_base_config
from study.sweep.spec import StudySettings
from study.task import MODELS, TASKS

# The study name is a folder and a file name: a safe character set, no path of its own.
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Workers beyond this many per core (CPU) or per GPU slot only wait for their turn.
WORKERS_PER_PLACE = 2


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep needs, checked before anything is written."""

    settings: StudySettings  # what its workers go by too
    max_failures: int
    threads: int
    slots: list[DeviceSlot]
    workers_note: str  # why fewer workers run than sweep.workers asked for ("" if as asked)
    pack_note: str  # why a worker packs fewer trials than sweep.pack asked for ("" if as asked)
    base_config: DictConfig  # a trial's run config before its sampled values are set
    sweep_dir: Path
    definition: dict[str, Any]  # what the study means (study.sweep.definition)
    timeout: float | None = None  # seconds of this session on this host (study.sweep.budget)
    fork_server: bool = False  # workers forked from one preloaded process (study.sweep.zygote)

    @property
    def in_flight(self) -> int:
        """Trials that train at once on this host: its workers' packs."""
        return len(self.slots) * self.settings.pack

    def first_line(self) -> str:
        """What the sweep says at once, before its slower imports and the study's opening."""
        budget = f" within {self.timeout:g} s" if self.timeout is not None else ""
        devices = ", ".join(sorted({slot.label for slot in self.slots}))
        settings = self.settings
        return (
            f"study {settings.study_name}: up to {settings.n_trials} trials{budget}; "
            f"starting on {devices}"
        )

    def capped_to(self, trials_left: int) -> SweepPlan:
        """This plan with no more workers than trials left to run, and no more trials in
        flight (workers x pack) than that either."""
        if trials_left < 1:
            return self
        plan = self
        if len(plan.slots) > trials_left:
            note = f" (sweep.workers capped: {trials_left} trials left)"
            plan = replace(plan, slots=plan.slots[:trials_left], workers_note=note)
        pack, workers, pack_note, workers_note = capped_pack(
            plan.settings.pack, trials_left, len(plan.slots), "left"
        )
        if (pack, workers) == (plan.settings.pack, len(plan.slots)):
            return plan
        return replace(
            plan,
            settings=replace(plan.settings, pack=pack),
            pack_note=pack_note,
            slots=plan.slots[:workers],
            workers_note=workers_note or plan.workers_note,
        )


def check_study_name(name: str) -> None:
    if not _STUDY_NAME.match(name) or ".." in name:
        raise UserError(
            f"sweep.study_name={name!r} is not allowed: it names a folder and a file, so use "
            "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, no '..'"
        )


def check_metric(cfg: DictConfig, metric: str) -> None:
    """UserError unless our model logs `metric` every epoch (a user's own model: not known)."""
    task = MODELS.get(str(cfg.model.get("_target_")))
    logged = TASKS[task].epoch_metrics if task is not None else None
    if logged is not None and metric not in logged:
        raise UserError(
            f"sweep.metric={metric!r} is never logged by this model: use one of "
            f"{', '.join(logged)}"
        )


def check_devices(devices: Sequence[Any] | None) -> None:
    if devices is None:
        return
    visible = visible_gpus()
    for device in devices:
        if str(device) not in visible:
            raise UserError(
                f"sweep.devices lists GPU {device}, which is not visible here: visible GPUs are "
                f"{', '.join(visible) or 'none'} (sweep.devices=null uses every visible GPU)"
            )


def capped_slots(
    slots: list[DeviceSlot], workers: Any, n_trials: int, trials_per_gpu: int
) -> tuple[list[DeviceSlot], str]:
    """No more workers than trials, nor than WORKERS_PER_PLACE per core or GPU slot; and why."""
    gpus = {slot.device for slot in slots if slot.device is not None}
    places = len(gpus) * trials_per_gpu if gpus else os.cpu_count() or 1
    limits = [
        (n_trials, f"{n_trials} trials"),
        (WORKERS_PER_PLACE * places, f"{WORKERS_PER_PLACE} per {'GPU slot' if gpus else 'core'}"),
    ]
    limit, why = min(limits)
    if len(slots) <= limit:
        return slots, ""
    return slots[:limit], f" (sweep.workers={workers} capped: {why})"


# What may differ between the members of a pack: one architecture, optimizer and data per pack.
PACKABLE = ("optimizer.lr", "optimizer.weight_decay", "model.dropout", "data.batch_size")
# The most trials a worker packs by itself: where a pack of small MLPs stops gaining (measured
# on 2 CPU cores: 16 -> 64 members still gained ~2x); wide layers make each member's matmuls
# big enough that a pack of many only queues work.
AUTO_PACK = {"cpu": 64, "gpu": 256}
WIDE_LAYER = 256
# Trials that train side by side cannot learn from each other: with the whole study in flight
# at once (64 trials, 32 per worker), TPE sampled blind and every seed's best value was worse
# than one at a time. With an eighth of the study in flight, the lecture study's best val/loss
# averaged 0.105 over 15 runs (a quarter: 0.107 over 10; one at a time: 0.101 over 15), and the
# study ended sooner (1.42x one at a time's trials/min, a quarter 1.31x): the pruner, which waits
# for as many finished trials as run at once, starts sooner. On the peer study (100 trials, 2
# workers, `python tools/bench.py pack-sizes`), a pack of 4 per worker reached the plain loop's
# best soonest (5.5-5.9 s; 2: 5.6-6.5, 8: 6.3-6.5, 16: 6.8, 1: 7.6-9.2): TPE samples at random
# until 10 trials have finished, and with 32 in flight it had sampled 48 of the 100 blind (4 per
# worker: 24-26). So a twelfth of the study is in flight (5 per worker there).
GENERATIONS = 12
# Under a time budget (sweep.timeout) the trials in flight at its end finish after it, so a pack
# of many makes the study end late. The lecture study at sweep.timeout=60 (2 workers, CPU):
# 64 per worker ended 13.9 s late (809 trials, best 0.1026), 16 5.8 s late (652, 0.0959),
# 8 5.9 s (636, 0.0922), one at a time 3.3 s (603, 0.0977). So a budget quarters the cap.
BUDGET_SHARE = 4


def unpackable(params: list[Param]) -> list[str]:
    """The searched paths that change what a pack's members share."""
    return [param.path for param in params if param.is_group or param.path not in PACKABLE]


def pack_size(
    setting: Any,
    cfg: DictConfig,
    params: list[Param],
    n_trials: int,
    slots: list[DeviceSlot],
    budgeted: bool = False,
) -> int:
    """`sweep.pack`: a number, or auto (a twelfth of the study's trials spread over the workers,
    up to a cap for the device, a quarter of it under a time budget; 1 where the search space
    changes what a pack must share)."""
    apart = unpackable(params)
    if setting == "auto":
        if apart:
            return 1
        cap = AUTO_PACK["gpu" if slots[0].device is not None else "cpu"]
        if max(cfg.model.hidden_sizes) >= WIDE_LAYER:
            cap //= 8
        if budgeted:
            cap //= BUDGET_SHARE
        return max(1, min(cap, -(-n_trials // (GENERATIONS * len(slots)))))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise UserError(f"sweep.pack={setting!r} is out of range: use auto or an integer >= 1")
    if setting > 1 and apart:
        raise UserError(
            f"sweep.pack={setting}: trials that search {apart[0]} cannot share a pack "
            f"(members share their architecture, optimizer and data; they may differ in "
            f"{', '.join(PACKABLE)}): use sweep.pack=1 or auto"
        )
    return setting


def packed_engine(setting: Any, asked: int, params: list[Param]) -> bool:
    """Whether the trials train in the packed engine: a pack of several, or auto wherever the
    search lets trials share a pack, even one at a time (a study too small to pack): its
    workers never import Lightning, ~2 s of a study's start here. `sweep.pack=1` is Lightning's
    one-at-a-time path."""
    return asked > 1 or (setting == "auto" and not unpackable(params))


def capped_pack(
    pack: int, trials: int, workers: int, which: str = ""
) -> tuple[int, int, str, str]:
    """At most `trials` in flight (workers x pack): a pruner compares trials with finished ones,
    so a study all of whose trials train at once could never prune. A pack shrinks to two at
    least (a pack of one trains through another engine, Lightning's, ~2 s more per worker
    start), then workers go. The pack, the workers, and why each shrank ("" if not)."""
    if workers * pack <= trials or pack == 1:
        return pack, workers, "", ""
    capped = min(pack, max(2, trials // workers))
    kept = max(1, min(workers, trials // capped))
    trials_text = f"{trials} trials{f' {which}' if which else ''}"
    pack_note = (
        f" (sweep.pack={pack} capped: {trials_text} for {workers} workers)"
        if capped < pack
        else ""
    )
    workers_note = f" (sweep.workers capped: {trials_text} in packs of {capped})"
    return capped, kept, pack_note, workers_note if kept < workers else ""


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
    refuse_unknown_added_keys(overrides, conf_dir, config_name, group_choices)
    settings = cfg.sweep
    study_name = str(settings.study_name)
    check_study_name(study_name)
    _check_engines(settings)
    n_trials = _positive_int(settings, "n_trials")
    max_failures = _positive_int(settings, "max_failures")
    retries = settings.get("retries", 1)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise UserError(f"sweep.retries={retries!r} is out of range: must be an integer >= 0")
    heartbeat_s = _positive_int(settings, "heartbeat_s")
    timeout = check_timeout(settings.get("timeout"))
    fork_server = settings.get("fork_server", False)
    if not isinstance(fork_server, bool):
        raise UserError(f"sweep.fork_server={fork_server!r} is not allowed: use true or false")
    storage_url = str(settings.storage or default_storage(study_name))
    check_storage_url(storage_url)
    check_devices(settings.devices)
    slots, workers_note = capped_slots(
        device_slots(settings.workers, settings.trials_per_gpu, settings.devices),
        settings.workers,
        n_trials,
        settings.trials_per_gpu,
    )
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
    metric = str(settings.metric)
    params = parse_space(nested_space(OmegaConf.to_container(cfg.search)), cfg, group_choices)  # type: ignore[arg-type]
    _check_range_ends(cfg, params, overrides, conf_dir, config_name, metric)
    checked = precheck_data(cfg)  # as a single run checks it: bad data fails here, not in trials
    base_config = trial_base_config(cfg, study_name)
    record_classes(base_config, checked)
    asked = pack_size(settings.get("pack", 1), cfg, params, n_trials, slots, timeout is not None)
    pack, kept, pack_note, capped_note = capped_pack(asked, n_trials, len(slots))
    slots, workers_note = slots[:kept], capped_note or workers_note
    return SweepPlan(
        settings=StudySettings(
            study_name=study_name,
            storage_url=storage_url,
            sampler=str(settings.sampler),
            pruner=str(settings.pruner),
            seed=int(settings.seed),
            direction=str(settings.direction),
            metric=metric,
            max_epochs=int(cfg.trainer.max_epochs),
            n_trials=n_trials,
            retries=retries,
            heartbeat_s=heartbeat_s,
            pack=pack,
            packed=packed_engine(settings.get("pack", 1), asked, params),
            params=params,
            overrides=list(overrides),
            config_name=config_name,
            conf_dir=conf_dir,
        ),
        max_failures=max_failures,
        pack_note=pack_note,
        threads=threads,
        slots=slots,
        workers_note=workers_note,
        base_config=base_config,
        sweep_dir=sweep_dir,
        definition=study_definition(
            base_config, params, metric, str(settings.direction), group_choices
        ),
        timeout=timeout,
        fork_server=fork_server,
    )


def _check_engines(settings: DictConfig) -> None:
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


def _check_range_ends(
    cfg: DictConfig,
    params: list[Param],
    overrides: Sequence[str],
    conf_dir: str,
    config_name: str,
    metric: str,
) -> None:
    """Each end of every range must make a valid run config that logs the study's metric."""
    check_metric(cfg, metric)
    for values in range_ends(params):
        shown = " ".join(param.override(value) for param, value in values)
        groups = [param.override(value) for param, value in values if param.is_group]
        try:
            # Composing costs ~0.15 s: only a config group's option needs it.
            composed = (
                compose_config(conf_dir, config_name, [*overrides, *groups]) if groups else cfg
            )
            validate(set_values(composed, values))
            check_metric(composed, metric)
        except UserError as error:
            raise UserError(f"search: the range end {shown} is unusable: {error}") from error
        except Exception as error:
            first = str(error).splitlines()[0]
            raise UserError(f"search: {shown} does not compose: {first}") from error

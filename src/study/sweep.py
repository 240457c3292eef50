"""The study: check everything, open the Optuna study and its MLflow parent run, run workers,
and summarize. Called by the Hydra sweeper for `python scripts/run.py -m sweep`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from study.compose import compose_config
from study.errors import UserError
from study.quota import StudyLock
from study.recovery import Recovery
from study.search import (
    FINISHED,
    PARENT_RUN_ATTR,
    PRUNERS,
    SAMPLERS,
    Param,
    best_trial,
    default_storage,
    extreme_overrides,
    make_pruner,
    make_sampler,
    make_storage,
    parse_space,
)
from study.study_report import finish_parent_run
from study.tracking import EXPERIMENT_KIND_TAG, Store, redact, runs_url
from study.validate import validate
from study.workers import Scheduler, Slot, Tally, device_slots, threads_per_worker


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
    threads: int
    slots: list[Slot]
    params: list[Param]
    overrides: list[str]
    config_name: str
    conf_dir: str
    sweep_dir: Path
    max_epochs: int


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
    for ends in extreme_overrides(params):
        try:
            validate(compose_config(conf_dir, config_name, [*overrides, *ends]))
        except UserError as error:
            raise UserError(
                f"search: the range end {' '.join(ends)} is unusable: {error}"
            ) from error
        except Exception as error:
            first = str(error).splitlines()[0]
            raise UserError(f"search: {' '.join(ends)} does not compose: {first}") from error
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
        threads=threads,
        slots=slots,
        params=params,
        overrides=list(overrides),
        config_name=config_name,
        conf_dir=conf_dir,
        sweep_dir=sweep_dir,
        max_epochs=int(cfg.trainer.max_epochs),
    )


def open_study(plan: SweepPlan) -> optuna.Study:
    storage = make_storage(plan.storage_url, plan.heartbeat_s)
    study = optuna.create_study(
        study_name=plan.study_name,
        storage=storage,
        direction=plan.direction,  # type: ignore[arg-type]  # checked in plan_sweep
        load_if_exists=True,
        sampler=make_sampler(plan.sampler, plan.seed),
        pruner=make_pruner(plan.pruner, plan.max_epochs),
    )
    if study.direction.name.lower() != plan.direction:
        raise UserError(
            f"study {plan.study_name!r} exists with direction "
            f"{study.direction.name.lower()}: use another sweep.study_name"
        )
    return study


def open_parent_run(
    study: optuna.Study, store: Store, client: MlflowClient, plan: SweepPlan, cfg: DictConfig
) -> tuple[str, str]:
    """The study's MLflow parent run: created once, reopened when the study resumes.

    Hosts starting at once call this under the study's lock, so only the first creates it.
    """
    experiment_id = store.experiment_id(client, plan.study_name)
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if run_id:
        client.update_run(run_id, status="RUNNING")
        return experiment_id, run_id
    tags = {
        "study": plan.study_name,
        "sweep.storage": redact(plan.storage_url),
        "mlflow.note.content": f"Optuna study {plan.study_name}: one child run per trial",
        **EXPERIMENT_KIND_TAG,
    }
    run = client.create_run(experiment_id, run_name=f"study {plan.study_name}", tags=tags)
    params = {f"sweep.{k}": redact(str(v)) for k, v in cfg.sweep.items()}
    params.update({f"search.{p.path}": json.dumps(p.distribution._asdict()) for p in plan.params})
    from mlflow.entities import Param as MlflowParam

    client.log_batch(run.info.run_id, params=[MlflowParam(k, v[:6000]) for k, v in params.items()])
    study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
    return experiment_id, run.info.run_id


def write_spec(
    plan: SweepPlan, experiment_id: str, parent_run_id: str, tracking_uri: str | None
) -> Path:
    spec = {
        "study_name": plan.study_name,
        "storage": plan.storage_url,
        "sampler": plan.sampler,
        "pruner": plan.pruner,
        "seed": plan.seed,
        "direction": plan.direction,
        "metric": plan.metric,
        "max_epochs": plan.max_epochs,
        "overrides": plan.overrides,
        "config_name": plan.config_name,
        "conf_dir": plan.conf_dir,
        "sweep_dir": str(plan.sweep_dir),
        "experiment_id": experiment_id,
        "parent_run_id": parent_run_id,
        "tracking_uri": tracking_uri,
        "n_trials": plan.n_trials,
        "retries": plan.retries,
        "heartbeat_s": plan.heartbeat_s,
        "params": [
            {
                "path": p.path,
                "is_group": p.is_group,
                "distribution": optuna.distributions.distribution_to_json(p.distribution),
            }
            for p in plan.params
        ],
    }
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    path = plan.sweep_dir / ".worker_spec.json"
    # It holds the real URLs (workers connect with them): readable by its owner only, from the
    # first byte on (chmod after writing would leave a moment where others may read it).
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(json.dumps(spec))
    return path


class ProgressLine:
    """One line for the whole study: finished/total, pruned, failed, best so far, time."""

    def __init__(self, plan: SweepPlan, read: Callable[[], Tally]) -> None:
        self.plan = plan
        self.read = read
        self.start = time.monotonic()
        self.already = read().finished
        self.tty = sys.stdout.isatty()

    def render(self, tally: Tally) -> str:
        elapsed = time.monotonic() - self.start
        done_here = tally.finished - self.already
        left = self.plan.n_trials - tally.finished
        eta = f"{_clock(elapsed / done_here * left)}" if done_here else "?"
        best = (
            f"{tally.best_value:.4g} (trial {tally.best_number})"
            if tally.best_value is not None
            else "-"
        )
        return (
            f"[{self.plan.study_name}] {tally.finished}/{self.plan.n_trials} finished, "
            f"{tally.pruned} pruned, {tally.failed} failed, {tally.running} running | "
            f"best {best} | "
            f"{_clock(elapsed)} elapsed, ETA {eta}"
        )

    def on_event(self, event: dict[str, Any]) -> None:
        if event["event"] == "lost":
            self._print(
                f"trial {event['number']} lost its worker (exit {event['code']}): "
                "failed; a new worker takes over"
            )
        if event["event"] in ("finished", "lost"):
            self._print(self.render(self.read()), overwrite=True)

    def _print(self, line: str, overwrite: bool = False) -> None:
        if self.tty and overwrite:
            print(f"\r{line}\033[K", end="", flush=True)
        elif self.tty:
            print(f"\r{line}\033[K", flush=True)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.tty:
            print()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return (
        f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"
        if minutes >= 60
        else f"{minutes}:{secs:02d}"
    )


def read_tally(study: optuna.Study, n_trials: int) -> Tally:
    """The study's progress from its storage: every host's trials count."""
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    tally = Tally(
        n_trials=n_trials,
        finished=sum(state in FINISHED for state in states),
        pruned=states.count(optuna.trial.TrialState.PRUNED),
        failed=states.count(optuna.trial.TrialState.FAIL),
        running=states.count(optuna.trial.TrialState.RUNNING),
    )
    best = best_trial(study)
    if best is not None:
        tally.best_value, tally.best_number = best.value, best.number
    return tally


def run_sweep(
    cfg: DictConfig,
    overrides: Sequence[str],
    conf_dir: str,
    config_name: str,
    sweep_dir: Path,
    group_choices: dict[str, Any],
) -> Tally:
    plan = plan_sweep(cfg, overrides, conf_dir, config_name, sweep_dir, group_choices)
    store = Store.from_config(cfg.tracking.uri)
    client = store.client()
    study = open_study(plan)
    lock = StudyLock(plan.storage_url, plan.study_name)
    with lock.held():  # hosts starting at the same moment: one parent run for the study
        experiment_id, parent_run_id = open_parent_run(study, store, client, plan, cfg)
    recovery = Recovery(
        study,
        lock,
        client,
        experiment_id,
        parent_run_id,
        plan.retries,
    )
    # A scheduler's SIGTERM stops the sweep like Ctrl-C: workers stop, runs close KILLED.
    previous_handler = signal.signal(signal.SIGTERM, signal.default_int_handler)
    status = "FAILED"
    try:
        stale = recovery.fail_orphans()
        tally = read_tally(study, plan.n_trials)
        progress = ProgressLine(plan, lambda: read_tally(study, plan.n_trials))
        print(
            f"study {plan.study_name}: {tally.finished}/{plan.n_trials} trials finished"
            f"{f', {stale} left RUNNING by a dead sweep failed' if stale else ''}; "
            f"{len(plan.slots)} workers on {', '.join(sorted({s.label for s in plan.slots}))}; "
            f"storage {redact(plan.storage_url)}",
            flush=True,
        )
        scheduler = Scheduler(
            plan.slots,
            write_spec(plan, experiment_id, parent_run_id, cfg.tracking.uri),
            plan.sweep_dir,
            plan.max_failures,
            on_event=progress.on_event,
            on_worker_lost=recovery.worker_lost,
            threads=plan.threads,
        )
        if tally.finished < plan.n_trials:
            scheduler.run()
        progress.close()
        print(finish_parent_run(client, parent_run_id, study, plan.sweep_dir))
        if str(cfg.tracking.uri or "").startswith(("http://", "https://")):  # a server
            print(f"browse: {runs_url(redact(cfg.tracking.uri), experiment_id)}")
        else:
            print(
                f"browse: {runs_url('http://127.0.0.1:5000', experiment_id)}  "
                "(after python scripts/ui.py)"
            )
        if scheduler.stop_reason is not None:
            raise UserError(f"study {plan.study_name} stopped: {scheduler.stop_reason}")
        status = "FINISHED"
        return read_tally(study, plan.n_trials)
    except KeyboardInterrupt:
        status = "KILLED"
        print(
            f"\nstudy {plan.study_name} interrupted: rerun the same command to resume",
            file=sys.stderr,
        )
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        with contextlib.suppress(Exception):  # workers are gone: nothing may stay RUNNING
            recovery.fail_orphans()
        client.set_terminated(parent_run_id, status)

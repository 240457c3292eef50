"""A study from the parent process: check everything, open the Optuna study and its MLflow parent
run, run the worker pool, and summarize. Called by the Hydra sweeper for
`python scripts/run.py -m sweep`.
"""

from __future__ import annotations

import contextlib
import sys

import optuna
from mlflow.entities import Param as MlflowParam
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import distribution_to_json

from study.errors import UserError, interrupt_once
from study.paths import TrackingChoice, choose_tracking_uri, script_command, store_option
from study.secrets import redact
from study.sweep.backends import (
    StudyLock,
    make_pruner,
    make_sampler,
    make_storage,
    quiet_optuna,
    storage_exists,
)
from study.sweep.budget import Budget, ended_note
from study.sweep.curves_writer import CurvesFromWorkers
from study.sweep.definition import DEFINITION_ATTR, encode
from study.sweep.plan import SweepPlan
from study.sweep.pool import SPEC_FILE, EarlyWorkers, Scheduler
from study.sweep.progress import ProgressLine, Tally, read_tally
from study.sweep.recovery import Recovery
from study.sweep.report import finish_parent_run, import_plotting_meanwhile
from study.sweep.resume import check_study
from study.sweep.spec import WorkerSpec
from study.tracking import EXPERIMENT_KIND_TAG, Store, configure_process, runs_url

STILL_STOPPING = "still stopping: the workers are closing their runs (a few seconds)"
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # the study's user attribute naming its parent run


def open_study(plan: SweepPlan, client: MlflowClient) -> optuna.Study:
    """The study, created with its definition or resumed if it means the same; UserError (and
    nothing written) if it is not the study `plan` describes."""
    settings = plan.settings
    existing = storage_exists(settings.storage_url)
    storage = make_storage(settings.storage_url, settings.heartbeat_s) if existing else None
    if storage is None or settings.study_name not in optuna.get_all_study_names(storage):
        refuse_second_store(client, plan)
    study = optuna.create_study(
        study_name=settings.study_name,
        storage=storage or make_storage(settings.storage_url, settings.heartbeat_s),
        direction=settings.direction,  # type: ignore[arg-type]  # checked in plan_sweep
        load_if_exists=True,
        sampler=make_sampler(settings.sampler, settings.seed),
        pruner=make_pruner(settings.pruner, settings.max_epochs, plan.in_flight),
    )
    check_study(study, plan)
    recorded = study.user_attrs.get(DEFINITION_ATTR)
    if recorded is None:  # a new study, or one made before studies recorded their definition
        study.set_user_attr(DEFINITION_ATTR, encode(plan.definition))
    return study


def refuse_second_store(client: MlflowClient, plan: SweepPlan) -> None:
    """UserError if the study's MLflow experiment already holds a study kept in another store:
    a second parent run with a second "trial 0" would mix two studies in one experiment."""
    settings = plan.settings
    experiment = client.get_experiment_by_name(settings.study_name)
    if experiment is None:
        return
    parents = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.study = '{settings.study_name}' and tags.`sweep.storage` LIKE '%'",
        max_results=1,
    )
    storage = redact(settings.storage_url)
    for parent in parents:
        if parent.data.tags["sweep.storage"] != storage:
            raise UserError(
                f"study {settings.study_name!r} is kept in sweep.storage="
                f"{parent.data.tags['sweep.storage']!r}, not {storage!r}: use that storage to "
                "resume it, or sweep.study_name=NAME for a new study"
            )


def open_parent_run(
    study: optuna.Study, store: Store, client: MlflowClient, plan: SweepPlan, cfg: DictConfig
) -> tuple[str, str]:
    """The study's MLflow parent run: created once, reopened when the study resumes.

    Hosts starting at once call this under the study's lock, so only the first creates it.
    """
    settings = plan.settings
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if run_id:
        try:
            experiment_id = client.get_run(run_id).info.experiment_id
        except MlflowException:
            raise UserError(
                f"study {settings.study_name!r} is tracked in another MLflow store: its parent "
                f"run {run_id} is not in {redact(store.uri)}; resume it with the tracking.uri it "
                "started with, or start a new study with another sweep.study_name"
            ) from None
        client.update_run(run_id, status="RUNNING")
        return experiment_id, run_id
    experiment_id = store.experiment_id(client, settings.study_name)
    tags = {
        "study": settings.study_name,
        "sweep.storage": redact(settings.storage_url),
        "mlflow.note.content": f"Optuna study {settings.study_name}: one child run per trial",
        **EXPERIMENT_KIND_TAG,
    }
    run = client.create_run(experiment_id, run_name=f"study {settings.study_name}", tags=tags)
    params = {f"sweep.{k}": redact(str(v)) for k, v in cfg.sweep.items()}
    params.update(
        {f"search.{p.path}": distribution_to_json(p.distribution) for p in settings.params}
    )
    client.log_batch(run.info.run_id, params=[MlflowParam(k, v[:6000]) for k, v in params.items()])
    study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
    return experiment_id, run.info.run_id


def worker_spec(
    plan: SweepPlan,
    experiment_id: str,
    parent_run_id: str,
    tracking_uri: str | None,
    budget: Budget | None = None,
) -> WorkerSpec:
    base = OmegaConf.to_container(plan.base_config, resolve=False)
    assert isinstance(base, dict)
    return WorkerSpec(
        settings=plan.settings,
        in_flight=plan.in_flight,
        base_config={str(key): value for key, value in base.items()},
        sweep_dir=str(plan.sweep_dir),
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        tracking_uri=tracking_uri,
        deadline=budget.deadline if budget else None,
    )


def packed_note(pack: int) -> str:
    return f", {pack} trials packed in each" if pack > 1 else ", a trial at a time, packed engine"


def browse_hint(tracking: TrackingChoice, experiment_id: str) -> str:
    """Where to see the study's runs: its server, or the UI on its store (named unless it is
    the default one, which scripts/ui.py opens by itself)."""
    if tracking.uri.startswith(("http://", "https://")):  # a server
        return f"browse: {runs_url(redact(tracking.uri), experiment_id)}"
    ui = script_command("ui") + store_option(tracking)
    return f"browse: {runs_url('http://127.0.0.1:5000', experiment_id)}  (after {ui})"


def run_sweep(
    cfg: DictConfig,
    plan: SweepPlan,
    early: EarlyWorkers | None = None,
    started: float | None = None,
) -> Tally:
    """Run the study `plan` (from study.sweep.plan.plan_sweep on `cfg`) to its end, with the
    `early` workers started for its slots where there are any. `sweep.timeout` counts from
    `started` (time.monotonic() when the sweep began on this host; None: now)."""
    budget = Budget.start(plan.timeout, started)
    settings = plan.settings
    configure_process()
    quiet_optuna()
    tracking = choose_tracking_uri(cfg.tracking.uri)
    store = Store.from_uri(cfg.tracking.uri)
    client = store.client()
    study = open_study(plan, client)
    plan = plan.capped_to(settings.n_trials - read_tally(study, settings.n_trials).finished)
    settings = plan.settings  # its pack capped to the trials left
    lock = StudyLock(settings.storage_url, settings.study_name)
    with lock.held():  # hosts starting at the same moment: one parent run for the study
        experiment_id, parent_run_id = open_parent_run(study, store, client, plan, cfg)
    recovery = Recovery(
        study, lock, client, experiment_id, parent_run_id, settings.retries, settings.n_trials
    )
    # A scheduler's SIGTERM stops the sweep like Ctrl-C: workers stop, runs close KILLED; a
    # second signal does not cut that short.
    figures = CurvesFromWorkers(store.uri)  # packed trials' curves.png, drawn meanwhile
    with interrupt_once(STILL_STOPPING):
        status = "FAILED"
        try:
            stale = recovery.fail_orphans()
            tally = read_tally(study, settings.n_trials)
            progress = ProgressLine(
                settings.study_name,
                settings.n_trials,
                lambda: read_tally(study, settings.n_trials),
                budget,
            )
            print(
                f"study {settings.study_name}: {tally.finished}/{settings.n_trials} trials "
                f"finished{f', {stale} left RUNNING by a dead sweep failed' if stale else ''}; "
                f"{len(plan.slots)} workers on {', '.join(sorted({s.label for s in plan.slots}))}"
                f"{plan.workers_note}"
                f"{packed_note(settings.pack) if settings.packed else ''}"
                f"{plan.pack_note}; storage {redact(settings.storage_url)}; "
                f"MLflow {tracking.describe()}",
                flush=True,
            )
            scheduler = Scheduler(
                plan.slots,
                worker_spec(plan, experiment_id, parent_run_id, cfg.tracking.uri, budget).write(
                    plan.sweep_dir / SPEC_FILE
                ),
                plan.sweep_dir,
                plan.max_failures,
                on_event=figures.then(progress.on_event),
                on_worker_lost=recovery.worker_lost,
                threads=plan.threads,
                early=early,
                budget=budget,
                # Under a budget, trials wait for their figures: the study ends with its budget.
                hold=figures.too_far_behind if budget.deadline is not None else lambda: False,
            )
            plotting = import_plotting_meanwhile()
            if tally.finished < settings.n_trials:
                scheduler.run()
            progress.close()
            plotting.join()
            ended = read_tally(study, settings.n_trials)
            if budget.spent() and ended.finished < settings.n_trials and not scheduler.stop_reason:
                ran = ended.finished + ended.failed - tally.finished - tally.failed
                n_trials = settings.n_trials
                print(ended_note(settings.study_name, budget, ran, ended.finished, n_trials))
            # The best trial's figure among them: the summary then finds it, not draws it again.
            figures.draw_waiting()
            print(finish_parent_run(client, parent_run_id, study, plan.sweep_dir))
            figures.close()
            print(browse_hint(tracking, experiment_id))
            if scheduler.stop_reason is not None:
                raise UserError(f"study {settings.study_name} stopped: {scheduler.stop_reason}")
            status = "FINISHED"
            return read_tally(study, settings.n_trials)
        except KeyboardInterrupt:
            status = "KILLED"
            print(
                f"\nstudy {settings.study_name} interrupted: rerun the same command to resume",
                file=sys.stderr,
            )
            raise
        finally:
            figures.abort()
            with contextlib.suppress(Exception):  # workers are gone: nothing may stay RUNNING
                recovery.fail_orphans()
            client.set_terminated(parent_run_id, status)

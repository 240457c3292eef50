"""Rebuild a run from what its MLflow run logged, train it again, and compare the numbers."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from study.config import check_stored_config, validate
from study.diagnosis import CURVES  # compared epoch by epoch, not only at the end
from study.errors import UserError
from study.markers import MARKERS
from study.paths import TrackingChoice, choose_tracking_uri, script_command, store_option
from study.run import CONFIG_ARTIFACT, run_one
from study.tracking import RUN_STORE_HINT, Store, find_run, is_group

REPRODUCED_FROM_TAG = "study.reproduced_from"


def refuse_unrerunnable(run: Run, tracking: TrackingChoice) -> None:
    """UserError for a run that holds nothing to compare: a study's parent run, or one that
    did not finish (KILLED, FAILED, or still RUNNING)."""
    run_id, tags = run.info.run_id, run.data.tags
    if "sweep.storage" in tags and "trial_number" not in tags:  # study.sweep.driver's parent
        best = tags.get("best_run_id")
        example = (
            f", e.g. its best: {script_command('reproduce', best)}{store_option(tracking)}"
            if best
            else ""
        )
        raise UserError(
            f"run {run_id} is the parent run of study {tags.get('study', '?')!r}: it trained "
            f"nothing itself; reproduce one of its trials{example}"
        )
    status = run.info.status
    if status in ("KILLED", "FAILED"):
        why = f" ({tags['error']})" if tags.get("error") else ""
        raise UserError(f"run {run_id} was {status} before it finished{why}: nothing to compare")
    if status != "FINISHED":
        raise UserError(
            f"run {run_id} is {status}: it has not finished (or its process died and a rerun of "
            "its command will close it): nothing to compare yet"
        )


def cut_short(run: Run) -> int | None:
    """The epochs a trial its pruner stopped (or that diverged) ran; None for any other run."""
    if run.data.tags.get("trial_state") != "PRUNED":
        return None
    epochs = run.data.metrics.get("stopped_epoch")
    return int(epochs) if epochs else None


def fetch_config(
    client: MlflowClient, run_id: str, store: Store, tracking_uri: str | None = None
) -> tuple[DictConfig, str]:
    """The run's logged config and its experiment's name; UserError if either is missing."""
    run = find_run(client, run_id, store.uri)
    refuse_unrerunnable(run, choose_tracking_uri(tracking_uri))
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(run_id, CONFIG_ARTIFACT, folder)
        except (MlflowException, OSError) as error:
            raise UserError(
                f"run {run_id} has no logged {CONFIG_ARTIFACT}: it was not "
                "recorded by study, so it cannot be rebuilt"
            ) from error
        try:
            cfg = OmegaConf.load(path)  # YAML only: no code runs while it is read
        except Exception as error:  # yaml/omegaconf parse errors of an edited file
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UserError(
                f"run {run_id}: its {CONFIG_ARTIFACT} cannot be read: {reason}"
            ) from error
    if not isinstance(cfg, DictConfig):
        raise UserError(f"run {run_id}: its {CONFIG_ARTIFACT} is not a mapping of config keys")
    check_stored_config(cfg, f"run {run_id}'s {CONFIG_ARTIFACT}")
    validate(cfg)
    epochs = cut_short(run)
    if epochs is not None:  # the rerun stops where the pruner stopped the trial
        cfg.trainer.max_epochs = epochs
        print(
            f"run {run_id} was stopped by its study at epoch {epochs} "
            f"({run.data.tags.get('reason', 'pruned')}): comparing the {epochs} epochs it ran"
        )
    experiment = client.get_experiment(run.info.experiment_id)
    cfg.tracking.experiment = experiment.name
    threads = run.data.tags.get("torch.threads")
    if threads and threads.isdigit() and int(threads) > 0:
        # Float sums split across a different number of threads round differently.
        torch.set_num_threads(int(threads))
    return cfg, run.data.tags.get("mlflow.runName", run_id)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def compare(client: MlflowClient, original_id: str, reproduced_id: str) -> tuple[str, bool]:
    """A side-by-side table of the final metrics and whole curves, and whether all match."""
    original = client.get_run(original_id).data.metrics
    reproduced = client.get_run(reproduced_id).data.metrics
    # Markers (study.markers) follow from the curves: comparing those is enough.
    names = sorted(name for name in set(original) & set(reproduced) if name not in MARKERS)
    rows = [f"{'metric':<22}{'original':>14}{'reproduced':>14}  same"]
    identical = bool(names)
    for name in names:
        a, b = original[name], reproduced[name]
        same = _same(a, b)
        if name in CURVES:
            first = [m.value for m in client.get_metric_history(original_id, name)]
            second = [m.value for m in client.get_metric_history(reproduced_id, name)]
            same &= len(first) == len(second) and all(map(_same, first, second))
            name = f"{name} ({len(first)} ep)"
        identical &= same
        rows.append(f"{name:<22}{a:>14.6g}{b:>14.6g}  {'yes' if same else 'NO'}")
    return "\n".join(rows), identical


def reproduce(run_id: str, tracking_uri: str | None = None, output_dir: Path | None = None) -> int:
    store = Store.from_uri(tracking_uri).must_exist(RUN_STORE_HINT)
    client = store.client()
    cfg, name = fetch_config(client, run_id, store, tracking_uri)
    cfg.tracking.uri = tracking_uri
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    output_dir = output_dir or Path("outputs") / "reproduce" / f"{run_id}_{stamp}"
    # The config groups the original chose, by name: its config.yaml holds their values only.
    params = client.get_run(run_id).data.params
    chosen = [f"{key}={value}" for key, value in params.items() if is_group(cfg, key)]
    outcome = run_one(
        cfg,
        output_dir,
        chosen,
        run_name=f"reproduce {name}",
        tags={REPRODUCED_FROM_TAG: run_id},
        store=store,
    )
    table, identical = compare(client, run_id, outcome.run_id)
    print(f"original {run_id} vs reproduction {outcome.run_id}:")
    print(table)
    print("identical" if identical else "DIFFERENT: see the rows marked NO")
    return 0 if identical else 1

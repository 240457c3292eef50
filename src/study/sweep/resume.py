"""An existing study read before anything starts (no MLflow, no torch, no worker): a study that
means something else is refused, one with nothing left to run says so, in about a second."""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from study.errors import UserError
from study.sweep.backends import FINISHED, best_trial, make_storage, storage_exists
from study.sweep.definition import DEFINITION_ATTR, check_same_study
from study.sweep.plan import SweepPlan


@dataclass(frozen=True)
class StudyState:
    finished: int  # complete or pruned trials, every host's
    exists: bool


def check_study(study: optuna.Study, plan: SweepPlan) -> int:
    """UserError unless `study` is the study `plan` describes with at most plan.settings.n_trials
    finished trials; its finished trials."""
    settings = plan.settings
    if study.direction.name.lower() != settings.direction:
        raise UserError(
            f"study {settings.study_name!r} exists with direction "
            f"{study.direction.name.lower()}: use another sweep.study_name"
        )
    recorded = study.user_attrs.get(DEFINITION_ATTR)
    if recorded is not None:
        check_same_study(settings.study_name, recorded, plan.definition)
    finished = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
    if finished > settings.n_trials:
        raise UserError(
            f"study {settings.study_name!r} has {finished} finished trials, more than "
            f"sweep.n_trials={settings.n_trials}: set sweep.n_trials above {finished} to extend it"
        )
    return finished


def read_study(plan: SweepPlan) -> StudyState:
    """The study's state in its storage, checked (check_study); a new study has none. Creates
    nothing: a storage that does not exist yet is not opened."""
    settings = plan.settings
    if not storage_exists(settings.storage_url):
        return StudyState(0, exists=False)
    storage = make_storage(settings.storage_url, settings.heartbeat_s)
    if settings.study_name not in optuna.get_all_study_names(storage):
        return StudyState(0, exists=False)
    study = optuna.load_study(study_name=settings.study_name, storage=storage)
    return StudyState(check_study(study, plan), exists=True)


def nothing_to_do(plan: SweepPlan) -> str:
    """What a finished study says instead of starting workers."""
    settings = plan.settings
    storage = make_storage(settings.storage_url, settings.heartbeat_s)
    study = optuna.load_study(study_name=settings.study_name, storage=storage)
    best = best_trial(study)
    best_text = f"; best value {best.value:.6g} (trial {best.number})" if best else ""
    return (
        f"study {settings.study_name}: {settings.n_trials}/{settings.n_trials} trials finished, "
        f"nothing to do{best_text}; raise sweep.n_trials to extend it"
    )

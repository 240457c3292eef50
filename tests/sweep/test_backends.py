"""study.sweep.backends: samplers, pruners, storages and the study's lock."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend

from study.errors import UserError
from study.paths import PROJECT_ROOT
from study.sweep.backends import (
    best_trial,
    default_storage,
    make_pruner,
    make_sampler,
    make_storage,
)

# --- samplers and pruners ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("gp", optuna.samplers.GPSampler),
        ("cmaes", optuna.samplers.CmaEsSampler),
    ],
)
def test_make_sampler_builds_each_named_sampler(name: str, kind: type) -> None:
    assert isinstance(make_sampler(name, 0), kind)


def test_a_seeded_sampler_repeats_its_samples() -> None:
    def first_values(seed: int) -> list[float]:
        study = optuna.create_study(sampler=make_sampler("random", seed))
        return [study.ask().suggest_float("x", 0, 1) for _ in range(3)]

    assert first_values(7) == first_values(7)
    assert first_values(7) != first_values(8)


def test_an_unknown_sampler_is_a_user_error_listing_the_choices() -> None:
    with pytest.raises(UserError, match=r"sweep.sampler='grid' is unknown: .*tpe, random, gp"):
        make_sampler("grid", 0)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("median", optuna.pruners.MedianPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
        ("none", optuna.pruners.NopPruner),
    ],
)
def test_make_pruner_builds_each_named_pruner(name: str, kind: type) -> None:
    assert isinstance(make_pruner(name, 20), kind)


@pytest.mark.parametrize("in_flight", [1, 8, 16])
def test_the_median_pruner_waits_for_as_many_finished_trials_as_train_at_once(
    in_flight: int,
) -> None:
    """The first trials to finish among many in flight are the fast learners: their median
    alone would prune the rest. A hopeless trial is pruned once max(5, in_flight) finished."""
    study = optuna.create_study(pruner=make_pruner("median", 20, in_flight))

    def hopeless_is_pruned() -> bool:
        trial = study.ask()
        trial.report(0.9, step=5)
        pruned = trial.should_prune()
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return pruned

    waits_for = max(5, in_flight)
    for _ in range(waits_for - 1):
        trial = study.ask()
        trial.report(0.1, step=5)
        study.tell(trial, 0.1)
    assert not hopeless_is_pruned()
    trial = study.ask()
    trial.report(0.1, step=5)
    study.tell(trial, 0.1)
    assert hopeless_is_pruned()


def test_an_unknown_pruner_is_a_user_error_listing_the_choices() -> None:
    with pytest.raises(UserError, match=r"sweep.pruner='asha' is unknown: .*median, hyperband"):
        make_pruner("asha", 20)


# --- storages ------------------------------------------------------------------------------


def test_a_file_path_is_a_journal_storage_in_a_folder_created_for_it(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "study.journal"
    storage = make_storage(str(path))
    assert isinstance(storage, optuna.storages.JournalStorage)
    optuna.create_study(study_name="s", storage=storage)
    assert path.is_file()


def test_a_journal_storage_is_shared_by_separate_handles(tmp_path: Path) -> None:
    path = str(tmp_path / "study.journal")
    study = optuna.create_study(study_name="s", storage=make_storage(path))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    again = optuna.load_study(study_name="s", storage=make_storage(path))
    assert [t.number for t in again.trials] == [0, 1]


def test_a_journal_append_is_never_fsynced_and_reads_back_in_optunas_own_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fsync(fd: int) -> None:
        raise AssertionError("a journal append was fsynced")

    path = str(tmp_path / "study.journal")
    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", no_fsync)
        study = optuna.create_study(study_name="s", storage=make_storage(path))
        trial = study.ask()
        trial.report(0.5, step=1)
        study.tell(trial, 0.25)
    stock = optuna.storages.JournalStorage(JournalFileBackend(path))  # optuna-dashboard's view
    [again] = optuna.load_study(study_name="s", storage=stock).trials
    assert (again.value, again.intermediate_values) == (0.25, {1: 0.5})


def test_a_torn_last_journal_line_is_dropped_by_the_next_append(tmp_path: Path) -> None:
    """What a power cut or a full disk may leave of an append: Optuna's reader skips a torn
    line while it is last, and fails every read once another line follows it."""
    path = tmp_path / "study.journal"
    study = optuna.create_study(study_name="s", storage=make_storage(str(path)))
    study.tell(study.ask(), 0.25)
    with path.open("ab") as journal:
        journal.write(b'{"op_code": 4, "worker_id"')
    again = optuna.load_study(study_name="s", storage=make_storage(str(path)))
    assert [t.value for t in again.trials] == [0.25]
    again.tell(again.ask(), 0.5)
    reread = optuna.load_study(study_name="s", storage=make_storage(str(path)))
    assert [t.value for t in reread.trials] == [0.25, 0.5]


def test_a_sqlite_url_is_an_rdb_storage(tmp_path: Path) -> None:
    storage = make_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert isinstance(storage, optuna.storages.RDBStorage)


def test_an_rdb_storage_opens_without_a_warning(tmp_path: Path) -> None:
    # A warning on stderr would break the one-error-line contract of a bad storage URL.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_storage(f"sqlite:///{tmp_path / 'optuna.db'}")


def test_a_url_of_an_unknown_scheme_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"sweep.storage='foo://bar' is not a storage Optuna"):
        make_storage("foo://bar")


def test_an_unreachable_sqlite_url_is_a_user_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'absent' / 'dir' / 'optuna.db'}"
    with pytest.raises(UserError, match="cannot be used"):
        make_storage(url)


def test_an_unreachable_postgresql_url_is_a_user_error_without_its_password() -> None:
    with pytest.raises(UserError) as error:
        make_storage("postgresql://u:secret@127.0.0.1:1/db")
    message = str(error.value)
    assert "secret" not in message
    assert "postgresql://u:***@127.0.0.1:1/db" in message
    # The connection itself failed: the driver we install (psycopg2) was found and used.
    assert "refused" in message.lower(), message


def test_a_journal_path_that_cannot_be_written_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot be written"):
        make_storage(str(blocker / "study.journal"))


def test_the_default_storage_is_a_journal_file_named_after_the_study() -> None:
    assert default_storage("lecture") == str(
        PROJECT_ROOT / "mlruns" / "optuna" / "lecture.journal"
    )


# --- the best trial ------------------------------------------------------------------------


def test_best_trial_is_none_before_any_trial_completes() -> None:
    study = optuna.create_study()
    study.enqueue_trial({})
    trial = study.ask()
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert best_trial(study) is None


def test_best_trial_is_the_best_complete_trial() -> None:
    study = optuna.create_study(direction="minimize")
    for value in (0.5, 0.2, 0.9):
        study.tell(study.ask(), value)
    best = best_trial(study)
    assert best is not None and best.number == 1

"""study.search: the search space from config, samplers, pruners and storages."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from study.errors import UserError
from study.search import (
    Param,
    best_trial,
    default_storage,
    extreme_overrides,
    make_pruner,
    make_sampler,
    make_storage,
    parse_space,
)
from study.tracking import PROJECT_ROOT

CONF_DIR = PROJECT_ROOT / "conf"
Distributions = optuna.distributions


def _sweep_config(*overrides: str) -> tuple[DictConfig, dict[str, Any]]:
    """conf/sweep.yaml composed, and Hydra's group choices (what the sweeper hands to search)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("sweep", overrides=list(overrides), return_hydra_config=True)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    assert isinstance(choices, dict)
    return cfg, choices


@pytest.fixture(scope="module")
def sweep_cfg() -> tuple[DictConfig, dict[str, Any]]:
    return _sweep_config()


def _parse(space: dict[str, Any], sweep_cfg: tuple[DictConfig, dict[str, Any]]) -> list[Param]:
    cfg, choices = sweep_cfg
    return parse_space(space, cfg, choices)


# --- the search space ----------------------------------------------------------------------


def test_default_search_space_is_lr_log_uniform_batch_size_categorical_dropout_uniform(
    sweep_cfg: tuple[DictConfig, dict[str, Any]],
) -> None:
    cfg, choices = sweep_cfg
    params = {p.path: p for p in parse_space(OmegaConf.to_container(cfg.search), cfg, choices)}
    assert list(params) == ["optimizer.lr", "data.batch_size", "model.dropout"]
    assert params["optimizer.lr"].distribution == Distributions.FloatDistribution(
        1e-4, 1e-1, log=True
    )
    assert params["data.batch_size"].distribution == Distributions.CategoricalDistribution(
        [16, 32, 64, 128]
    )
    assert params["model.dropout"].distribution == Distributions.FloatDistribution(0.0, 0.5)
    assert not any(p.is_group for p in params.values())


def test_a_config_group_key_is_searched_as_a_choice_of_its_files() -> None:
    cfg, choices = _sweep_config("search=wide")
    params = {p.path: p for p in parse_space(OmegaConf.to_container(cfg.search), cfg, choices)}
    assert params["optimizer"].is_group
    assert params["optimizer"].distribution.choices == ("adam", "adamw", "sgd", "rmsprop")
    assert not params["optimizer.lr"].is_group


def test_list_choices_travel_as_their_override_text() -> None:
    cfg, choices = _sweep_config("search=wide")
    params = {p.path: p for p in parse_space(OmegaConf.to_container(cfg.search), cfg, choices)}
    assert params["model.hidden_sizes"].distribution.choices == (
        "[16]",
        "[32,32]",
        "[64,64]",
        "[128,64,32]",
    )


def test_an_int_range_becomes_an_int_distribution(
    sweep_cfg: tuple[DictConfig, dict[str, Any]],
) -> None:
    [param] = _parse(
        {"trainer.max_epochs": {"type": "int", "low": 2, "high": 64, "log": True}}, sweep_cfg
    )
    assert param.distribution == Distributions.IntDistribution(2, 64, log=True)


F = "float"
BAD_SPACES = [
    pytest.param(
        {"model.nope": {"type": F, "low": 0, "high": 1}},
        ["search.model.nope", "not a config path"],
        id="unknown-path",
    ),
    pytest.param(
        {"model.dropout": {"type": F, "low": 0.5, "high": 0.5}},
        ["search.model.dropout", "low=0.5", "< high=0.5"],
        id="low-equals-high",
    ),
    pytest.param(
        {"model.dropout": {"type": F, "low": 0.6, "high": 0.1}},
        ["low=0.6", "high=0.1"],
        id="low-above-high",
    ),
    pytest.param(
        {"optimizer.lr": {"type": F, "low": 0.0, "high": 0.1, "log": True}},
        ["search.optimizer.lr", "log scale", "low > 0"],
        id="log-low-zero",
    ),
    pytest.param(
        {"optimizer.lr": {"type": F, "low": -1, "high": 0.1, "log": True}},
        ["log scale"],
        id="log-low-negative",
    ),
    pytest.param(
        {"data.batch_size": {"type": "categorical", "choices": []}},
        ["search.data.batch_size.choices", "empty"],
        id="empty-choices",
    ),
    pytest.param(
        {"data.batch_size": {"type": "categorical"}},
        ["search.data.batch_size.choices", "empty"],
        id="no-choices",
    ),
    pytest.param(
        {"model.dropout": {"type": "normal", "low": 0, "high": 1}},
        ["search.model.dropout.type='normal'", "float, int or categorical"],
        id="unknown-type",
    ),
    pytest.param(
        {"model.dropout": {"type": F, "low": "a", "high": 1}},
        ["search.model.dropout", "numeric low and high"],
        id="non-numeric-low",
    ),
    pytest.param({"model.dropout": 0.3}, ["search.model.dropout", "mapping"], id="not-a-mapping"),
    pytest.param({}, ["search is empty"], id="empty-space"),
]


@pytest.mark.parametrize(("space", "fragments"), BAD_SPACES)
def test_an_unusable_search_entry_is_a_user_error_naming_it(
    sweep_cfg: tuple[DictConfig, dict[str, Any]], space: dict[str, Any], fragments: list[str]
) -> None:
    with pytest.raises(UserError) as error:
        _parse(space, sweep_cfg)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_suggest_samples_within_the_range_and_returns_a_hydra_override() -> None:
    param = Param("optimizer.lr", Distributions.FloatDistribution(1e-4, 1e-1, log=True), False)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        override = param.suggest(trial)
        key, value = override.split("=", 1)
        assert key == "optimizer.lr"
        assert 1e-4 <= float(value) <= 1e-1
        assert trial.params["optimizer.lr"] == float(value)


def test_suggest_a_group_choice_is_an_override_of_the_group() -> None:
    param = Param("optimizer", Distributions.CategoricalDistribution(["sgd"]), True)
    trial = optuna.create_study().ask()
    assert param.suggest(trial) == "optimizer=sgd"


def test_extreme_overrides_are_both_ends_of_every_range_and_each_choice() -> None:
    params = [
        Param("optimizer.lr", Distributions.FloatDistribution(1e-4, 1e-1, log=True), False),
        Param("model.dropout", Distributions.FloatDistribution(0.0, 0.5), False),
        Param("data.batch_size", Distributions.CategoricalDistribution([16, 128]), False),
    ]
    assert extreme_overrides(params) == [
        ["optimizer.lr=0.0001", "model.dropout=0.0"],
        ["optimizer.lr=0.1", "model.dropout=0.5"],
        ["data.batch_size=16"],
        ["data.batch_size=128"],
    ]


def test_extreme_overrides_of_choices_only_has_no_empty_set() -> None:
    params = [Param("optimizer", Distributions.CategoricalDistribution(["adam", "sgd"]), True)]
    assert extreme_overrides(params) == [["optimizer=adam"], ["optimizer=sgd"]]


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

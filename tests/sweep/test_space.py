"""study.sweep.space: the search space from config, sampled values and trial configs."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from study.errors import UserError
from study.paths import PROJECT_ROOT
from study.sweep.space import (
    Param,
    choice_value,
    parse_space,
    range_ends,
    set_values,
    trial_base_config,
)

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


def test_suggest_samples_a_number_within_the_range() -> None:
    param = Param("optimizer.lr", Distributions.FloatDistribution(1e-4, 1e-1, log=True), False)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        value = param.suggest(trial)
        assert isinstance(value, float)
        assert 1e-4 <= value <= 1e-1
        assert trial.params["optimizer.lr"] == value
        assert param.override(value) == f"optimizer.lr={value}"


def test_suggest_a_group_choice_is_its_option_name_and_an_override_of_the_group() -> None:
    param = Param("optimizer", Distributions.CategoricalDistribution(["sgd"]), True)
    trial = optuna.create_study().ask()
    value = param.suggest(trial)
    assert value == "sgd"
    assert param.override(value) == "optimizer=sgd"


def test_a_list_choice_is_sampled_as_a_list_and_shown_as_its_override_text() -> None:
    param = Param(
        "model.hidden_sizes", Distributions.CategoricalDistribution(["[16]", "[64,64]"]), False
    )
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    value = param.suggest(trial)
    assert value in ([16], [64, 64])
    assert param.override(value) == f"model.hidden_sizes={trial.params['model.hidden_sizes']}"
    assert choice_value("adam") == "adam"
    assert choice_value(32) == 32


def test_range_ends_are_both_ends_of_every_range_and_each_choice() -> None:
    lr = Param("optimizer.lr", Distributions.FloatDistribution(1e-4, 1e-1, log=True), False)
    dropout = Param("model.dropout", Distributions.FloatDistribution(0.0, 0.5), False)
    batch = Param("data.batch_size", Distributions.CategoricalDistribution([16, 128]), False)
    assert range_ends([lr, dropout, batch]) == [
        [(lr, 1e-4), (dropout, 0.0)],
        [(lr, 0.1), (dropout, 0.5)],
        [(batch, 16)],
        [(batch, 128)],
    ]


def test_range_ends_of_choices_only_has_no_empty_set() -> None:
    group = Param("optimizer", Distributions.CategoricalDistribution(["adam", "sgd"]), True)
    assert range_ends([group]) == [[(group, "adam")], [(group, "sgd")]]


def test_a_trial_config_gets_the_sampled_values_as_values_and_no_sweep_sections(
    sweep_cfg: tuple[DictConfig, dict[str, Any]],
) -> None:
    cfg, _ = sweep_cfg
    base = trial_base_config(cfg, "my_study")
    assert "sweep" not in base and "search" not in base and "hydra" not in base
    assert base.tracking.experiment == "my_study"
    lr = Param("optimizer.lr", Distributions.FloatDistribution(1e-4, 1e-1, log=True), False)
    sizes = Param(
        "model.hidden_sizes", Distributions.CategoricalDistribution(["[16]", "[8,8]"]), False
    )
    trial_cfg = set_values(base, [(lr, 0.0123456789012345), (sizes, [8, 8])])
    assert trial_cfg.optimizer.lr == 0.0123456789012345  # the float itself, never reparsed
    assert list(trial_cfg.model.hidden_sizes) == [8, 8]
    assert base.optimizer.lr != 0.0123456789012345  # the base is left as it was

"""study.overrides: keys a config does not define, and search ranges set field by field."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from study.errors import UserError
from study.overrides import check_added_keys, nearest_name, nested_space, search_overrides
from study.paths import CONF_DIR


@pytest.fixture(scope="module")
def train():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train")


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("sweep_typo.n_trials", "the keys of the config are"),
        ("trainer.max_epoch", "did you mean trainer.max_epochs?"),
        ("trainer.early_stoping.patience", "did you mean trainer.early_stopping.patience?"),
        ("optimiser.lr", "did you mean optimizer.lr?"),
        ("optimizer.learning_rate", "the keys of optimizer are lr, weight_decay"),
    ],
)
def test_the_nearest_name_of_a_misspelled_key(train, key: str, hint: str) -> None:
    assert hint in nearest_name(train, key)


def test_an_added_key_the_config_lacks_is_refused_with_the_nearest_name(train) -> None:
    with pytest.raises(UserError, match=r"did you mean trainer\.max_epochs\?"):
        check_added_keys(["+trainer.max_epoch=3"], train, {})


def test_an_added_key_the_built_class_takes_is_accepted(train) -> None:
    check_added_keys(["+optimizer.amsgrad=true", "++optimizer.lr=0.1"], train, {})
    with pytest.raises(UserError, match=r"optimizer\.learning_rate"):
        check_added_keys(["+optimizer.learning_rate=0.1"], train, {})


def test_added_config_groups_hydra_and_search_keys_are_left_to_their_own_checks(train) -> None:
    check_added_keys(
        ["+preset=tiny", "+hydra.job.env_set.X=1", "+search.x={type:float}"], train, {"preset": 1}
    )


def test_search_fields_set_on_the_command_line_reach_hydra_as_forced_keys() -> None:
    argv = ["-m", "search.model.dropout.high=0.3", "search=wide", "model.dropout=0.1"]
    assert search_overrides(argv) == [
        "-m",
        "++search.model.dropout.high=0.3",
        "search=wide",
        "model.dropout=0.1",
    ]


def test_nested_range_fields_change_the_dotted_range_they_name() -> None:
    space = {
        "optimizer": {
            "type": "categorical",
            "choices": ["adam", "sgd"],
            "lr": {"low": 0.001},  # search.optimizer.lr.low=0.001 beside a group's choices
        },
        "optimizer.lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
        "model": {"dropout": {"high": 0.3}, "activation": {"type": "categorical", "choices": [1]}},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
    }
    assert nested_space(space) == {
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        "optimizer.lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "model.activation": {"type": "categorical", "choices": [1]},
    }

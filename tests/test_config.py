"""validate(): each out-of-range value is a UserError naming the key and what is allowed."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from study.config import validate
from study.errors import UserError

MakeCfg = Callable[..., DictConfig]


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        (["optimizer.lr=0"], "optimizer.lr", "> 0"),
        (["optimizer.lr=-0.01"], "optimizer.lr", "> 0"),
        (["optimizer.weight_decay=-1"], "optimizer.weight_decay", ">= 0"),
        (["optimizer=sgd", "optimizer.momentum=1.0"], "optimizer.momentum", "[0, 1)"),
        (["data.batch_size=0"], "data.batch_size", ">= 1"),
        (["data.batch_size=2.5"], "data.batch_size", "integer"),
        (["model.dropout=1.0"], "model.dropout", "[0, 1)"),
        (["model.dropout=-0.1"], "model.dropout", "[0, 1)"),
        (["model.hidden_sizes=[]"], "model.hidden_sizes", "non-empty"),
        (["model.hidden_sizes=[0]"], "model.hidden_sizes", ">= 1"),
        (["model.hidden_sizes=[-3]"], "model.hidden_sizes", ">= 1"),
        (["model.hidden_sizes=[8,2.5]"], "model.hidden_sizes", "integer"),
        (["model.hidden_sizes=8"], "model.hidden_sizes", "list"),
        (["trainer.max_epochs=0"], "trainer.max_epochs", ">= 1"),
        (["model.activation=foo"], "model.activation", "relu"),
        (["trainer.accelerator=tpu"], "trainer.accelerator", "cpu"),
        (["trainer.early_stopping.patience=0"], "trainer.early_stopping.patience", ">= 1"),
        (["data.val_fraction=0"], "data.val_fraction", "(0, 1)"),
        (["data.test_fraction=1.0"], "data.test_fraction", "(0, 1)"),
        (["data.val_fraction=0.5", "data.test_fraction=0.45"], "data.val_fraction", "< 0.9"),
        (["data.n_samples=5"], "data.n_samples", ">= 10"),
        (["seed=abc"], "seed", "integer"),
        (["seed=-1"], "seed", "[0, 4294967295]"),
        (["seed=4294967296"], "seed", "[0, 4294967295]"),
        (["optimizer.lr=nan"], "optimizer.lr", "finite"),
        (["optimizer.lr=inf"], "optimizer.lr", "finite"),
        (["optimizer.weight_decay=nan"], "optimizer.weight_decay", "finite"),
        (["data.noise=nan"], "data.noise", "finite"),
        (["diagnosis.window=-inf"], "diagnosis.window", "finite"),
        (["optimizer.lr=fast"], "optimizer.lr", "number"),
        (["tracking.flush_every_s=0"], "tracking.flush_every_s", "> 0"),
        (["data=csv", "data.target=y"], "data.path", "must be set"),
        (["data=csv", "data.path=x.csv"], "data.target", "must be set"),
    ],
)
def test_bad_value_is_a_user_error_naming_the_key(
    make_cfg: MakeCfg, overrides: list[str], key: str, allowed: str
) -> None:
    cfg = make_cfg(*overrides)
    with pytest.raises(UserError) as caught:
        validate(cfg)
    message = str(caught.value)
    assert message.startswith(key), message
    assert allowed in message, message


def test_default_config_is_valid(make_cfg: MakeCfg) -> None:
    validate(make_cfg())


@pytest.mark.parametrize(
    "overrides",
    [
        ["optimizer=sgd", "optimizer.momentum=0"],
        ["optimizer=adamw"],
        ["optimizer=rmsprop", "model=regressor", "data=diabetes"],
        ["data=digits", "model.activation=tanh", "model.dropout=0.5"],
        ["data=csv", "data.path={tmp}/grades.csv", "data.target=passed"],
        ["trainer.early_stopping.enabled=false", "trainer.early_stopping.patience=0"],
    ],
)
def test_valid_variants_pass(make_cfg: MakeCfg, overrides: list[str], tmp_path: Path) -> None:
    (tmp_path / "grades.csv").write_text("lectures,passed\n3,0\n")
    validate(make_cfg(*(override.format(tmp=tmp_path) for override in overrides)))


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["tracking.uri=ftp://host/x"], "tracking.uri='ftp://host/x'"),
        (["data=csv", "data.path=/no/such/grades.csv", "data.target=y"], "does not exist"),
    ],
)
def test_what_needs_no_heavy_import_is_checked_before_it(
    make_cfg: MakeCfg, overrides: list[str], fragment: str
) -> None:
    with pytest.raises(UserError, match=re.escape(fragment)):
        validate(make_cfg(*overrides))

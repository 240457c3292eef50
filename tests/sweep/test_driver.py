"""study.sweep.driver.open_study: a study is created with its definition, and resumed only by a
command that means the same study; a refusal writes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from helpers import TINY
from study.errors import UserError
from study.sweep.backends import make_storage
from study.sweep.definition import DEFINITION_ATTR
from study.sweep.driver import open_parent_run, open_study
from study.sweep.plan import SweepPlan
from study.tracking import Store

NAME = ["sweep.study_name=s"]
MakePlan = Callable[..., SweepPlan]


@pytest.fixture
def client(store: Store) -> MlflowClient:
    return store.client()


def _stored(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=make_storage(str(tmp_path / "study.journal")))


def _finish_trials(study: optuna.Study, count: int) -> None:
    for value in range(count):
        study.tell(study.ask(), float(value))


@pytest.mark.parametrize("older", [False, True], ids=["new study", "study older than that"])
def test_a_study_records_its_definition_when_opened(
    make_plan: MakePlan, client: MlflowClient, tmp_path: Path, older: bool
) -> None:
    if older:  # made before studies recorded their definition: accepted, and recorded now
        optuna.create_study(study_name="s", storage=make_storage(str(tmp_path / "study.journal")))
    plan = make_plan(*NAME, *TINY)
    open_study(plan, client)
    assert json.loads(_stored(tmp_path).user_attrs[DEFINITION_ATTR]) == plan.definition


def test_resuming_with_other_data_is_refused_and_writes_nothing(
    make_plan: MakePlan, client: MlflowClient, tmp_path: Path
) -> None:
    _finish_trials(open_study(make_plan(*NAME, *TINY), client), 2)
    before = dict(_stored(tmp_path).user_attrs)  # a copy: user_attrs reads the storage anew
    with pytest.raises(UserError, match=r"created with data=lecture, this command has data=wine"):
        open_study(make_plan(*NAME, "data=wine", "sweep.n_trials=50"), client)
    after = _stored(tmp_path)
    assert after.user_attrs == before
    assert DEFINITION_ATTR in before
    assert len(after.trials) == 2


def test_n_trials_below_the_finished_trials_is_refused(
    make_plan: MakePlan, client: MlflowClient
) -> None:
    _finish_trials(open_study(make_plan(*NAME, *TINY), client), 3)
    with pytest.raises(UserError, match=r"has 3 finished trials, more than sweep.n_trials=2"):
        open_study(make_plan(*NAME, *TINY, "sweep.n_trials=2"), client)
    open_study(make_plan(*NAME, *TINY, "sweep.n_trials=3"), client)  # as many: nothing to run


def test_a_second_store_for_a_study_in_the_experiment_is_refused(
    make_plan: MakePlan, store: Store, client: MlflowClient, tmp_path: Path
) -> None:
    name = "two_stores"
    experiment_id = store.experiment_id(client, name)
    client.create_run(experiment_id, tags={"study": name, "sweep.storage": "/first.journal"})
    with pytest.raises(UserError, match=r"kept in sweep.storage='/first.journal', not '/"):
        open_study(make_plan(f"sweep.study_name={name}", *TINY), client)
    assert not (tmp_path / "study.journal").exists()  # not even an empty journal


def test_resuming_in_another_tracking_store_is_refused_and_writes_nothing(
    make_plan: MakePlan, store: Store, client: MlflowClient, tmp_path: Path
) -> None:
    plan = make_plan(*NAME, *TINY)
    study = open_study(plan, client)
    open_parent_run(study, store, client, plan, OmegaConf.create({"sweep": {"n_trials": 2}}))
    elsewhere = Store.from_uri(f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}")
    other_client = elsewhere.client()
    with pytest.raises(UserError, match=r"study 's' is tracked in another MLflow store: its"):
        open_parent_run(study, elsewhere, other_client, plan, OmegaConf.create())
    assert [e.name for e in other_client.search_experiments()] == ["Default"]


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (None, "(after python {ui})"),  # the default store: ui.py opens it by itself
        ("sqlite:///{tmp}/elsewhere.db", "(after python {ui} --tracking-uri sqlite:///{tmp}/"),
        ("http://mlflow-host:5000", "browse: http://mlflow-host:5000/#/experiments/3/runs"),
    ],
)
def test_the_browse_hint_names_the_store_unless_it_is_the_default(
    tmp_path: Path, uri: str | None, shown: str
) -> None:
    from study.paths import choose_tracking_uri, script_path
    from study.sweep.driver import browse_hint

    uri = uri.format(tmp=tmp_path) if uri else None
    hint = browse_hint(choose_tracking_uri(uri), "3")
    assert shown.format(ui=script_path("ui"), tmp=tmp_path) in hint
    if uri is None:
        assert "--tracking-uri" not in hint

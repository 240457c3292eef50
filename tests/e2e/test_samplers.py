"""The samplers and pruners the README offers beside TPE and the median pruner, each in a real
study through `python scripts/run.py -m sweep`: GP with Hyperband (packed, two torch threads per
worker, no retries) and CMA-ES (one trial at a time). The two studies run at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import optuna
import pytest
from harness import Sweep

from study.sweep.backends import FINISHED

TINY = ["data.n_samples=120", "model.hidden_sizes=[8]", "trainer.max_epochs=6"]
GP_STARTUP = 10  # GPSampler's n_startup_trials: random before it fits the GP

N_TRIALS = {"gp": GP_STARTUP + 2, "cmaes": 6}  # GP: the last two sampled by the fitted GP

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Sweep]:
    sweeps = {
        "gp": Sweep(
            tmp_path_factory.mktemp("gp"),
            "gp",
            *TINY,
            "sweep.sampler=gp",
            "sweep.pruner=hyperband",
            f"sweep.n_trials={N_TRIALS['gp']}",
            "sweep.workers=1",
            "sweep.pack=4",
            "sweep.threads_per_worker=2",
            "sweep.retries=0",
        ),
        "cmaes": Sweep(
            tmp_path_factory.mktemp("cmaes"),
            "cmaes",
            *TINY,
            "sweep.sampler=cmaes",
            f"sweep.n_trials={N_TRIALS['cmaes']}",
            "sweep.workers=1",
            "sweep.pack=1",
        ),
    }
    with ThreadPoolExecutor(len(sweeps)) as pool:
        results = dict(
            zip(sweeps, pool.map(lambda sweep: sweep.run(), sweeps.values()), strict=True)
        )
    for name, completed in results.items():
        assert completed.returncode == 0, (name, completed.stdout[-2000:], completed.stderr)
        assert "Traceback" not in completed.stderr, completed.stderr
    return sweeps


@pytest.mark.parametrize("name", ["gp", "cmaes"])
def test_the_study_finishes_its_trials_with_one_finished_run_each(
    studies: dict[str, Sweep], name: str
) -> None:
    sweep = studies[name]
    trials = sweep.trials()
    n_trials = int(
        next(o for o in sweep.overrides if o.startswith("sweep.n_trials=")).split("=")[1]
    )
    assert sum(t.state in FINISHED for t in trials) == n_trials
    assert not [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    children = [r for r in sweep.runs() if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.info.status for r in children) == ["FINISHED"] * len(trials)
    [parent] = [r for r in sweep.runs() if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.params["sweep.sampler"] == name


def test_cmaes_samples_from_its_search_distribution(studies: dict[str, Sweep]) -> None:
    # CMA-ES keeps its generation on each trial it sampled (the first is independent).
    sampled = [t for t in studies["cmaes"].trials() if "cma:generation" in t.system_attrs]
    assert len(sampled) >= 4, [t.system_attrs for t in studies["cmaes"].trials()]


def test_hyperband_rungs_are_recorded_on_packed_trials(studies: dict[str, Sweep]) -> None:
    trials = studies["gp"].trials()
    rungs = [k for t in trials for k in t.system_attrs if k.startswith("completed_rung_")]
    assert rungs, [t.system_attrs for t in trials]
    assert all(len(t.intermediate_values) >= 1 for t in trials)


def test_threads_per_worker_sets_each_trials_torch_threads(studies: dict[str, Sweep]) -> None:
    children = [r for r in studies["gp"].runs() if "mlflow.parentRunId" in r.data.tags]
    assert {r.data.tags["torch.threads"] for r in children} == {"2"}
    others = [r for r in studies["cmaes"].runs() if "mlflow.parentRunId" in r.data.tags]
    assert {r.data.tags["torch.threads"] for r in others} == {"1"}  # the default

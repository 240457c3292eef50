"""Real tiny runs whose verdict flips when only capacity, dropout, epochs or learning rate do.

The verdict comes from the curves alone: each pair below trains the same data and config but
for the one setting named in the test.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from helpers import all_runs
from study.data import prepare_data
from study.epochs import FitResult
from study.paths import CONF_DIR
from study.run import run_one
from study.train import fit

SMALL = ["data.n_samples=120", "trainer.progress_bar=false"]
# Wide, unregularized, never stopped early, on 72 noisy training students.
WIDE = [
    *SMALL,
    "model.hidden_sizes=[256,256]",
    "trainer.early_stopping.enabled=false",
    "trainer.max_epochs=60",
]
# A moderate network halted by early stopping.
BALANCED = [*SMALL, "trainer.max_epochs=300"]

Train = Callable[..., FitResult]


@pytest.fixture(scope="module")
def train(tmp_path_factory: pytest.TempPathFactory) -> Train:
    """Fits of the real conf/ with overrides; a config trained before is not trained again."""
    fits: dict[str, FitResult] = {}

    def _train(*overrides: str) -> FitResult:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=list(overrides))
        key = OmegaConf.to_yaml(cfg)
        if key not in fits:
            fits[key] = fit(cfg, tmp_path_factory.mktemp("run"))
        return fits[key]

    return _train


def verdict(result: FitResult) -> str:
    return result.diagnosis.verdict


def test_capacity_flips_overfit_to_underfit(train: Train) -> None:
    assert verdict(train(*WIDE)) == "overfit"
    assert verdict(train(*WIDE, "model.hidden_sizes=[8]")) == "underfit"


def test_dropout_flips_overfit_to_good(train: Train) -> None:
    assert verdict(train(*WIDE)) == "overfit"
    assert verdict(train(*WIDE, "model.dropout=0.5")) == "good"


def test_too_few_epochs_underfit(train: Train) -> None:
    assert verdict(train(*BALANCED)) == "good"
    assert verdict(train(*BALANCED, "trainer.max_epochs=5")) == "underfit"


def test_stopping_while_val_loss_still_falls_steeply_is_underfit(train: Train) -> None:
    stopped = train("trainer.progress_bar=false", "trainer.max_epochs=15")
    assert verdict(stopped) == "underfit"
    assert "still fell" in stopped.diagnosis.reason


@pytest.mark.parametrize(
    ("lr", "expected"), [("1e-5", "underfit"), ("1e-3", "good"), ("10", "diverged")]
)
def test_learning_rate_alone_decides_between_underfit_good_and_diverged(
    train: Train, lr: str, expected: str
) -> None:
    assert verdict(train(*BALANCED, f"optimizer.lr={lr}")) == expected


@pytest.mark.parametrize(
    ("optimizer", "expected"),
    [
        (["optimizer.lr=1e-5"], "underfit"),
        ([], "good"),
        (["optimizer=sgd", "optimizer.lr=1"], "diverged"),
    ],
)
def test_regressor_verdicts(train: Train, optimizer: list[str], expected: str) -> None:
    assert verdict(train(*BALANCED, "model=regressor", *optimizer)) == expected


def test_baseline_loss_is_a_constant_predictors_training_loss(
    make_cfg: Callable[..., DictConfig], train: Train
) -> None:
    result = train(*SMALL, "trainer.max_epochs=1")
    labels = prepare_data(make_cfg(*SMALL)).splits.train.y.float()
    share = float(labels.mean())
    entropy = -(share * math.log(share) + (1 - share) * math.log(1 - share))
    assert result.baseline_loss == pytest.approx(entropy, rel=1e-5)
    # Regression targets are standardized on the training split: predicting 0 costs 1.0.
    regressor = train(*SMALL, "trainer.max_epochs=1", "model=regressor")
    assert regressor.baseline_loss == pytest.approx(1.0, rel=1e-5)


def test_every_run_logs_its_verdict_gaps_and_annotated_curves(
    make_cfg: Callable[..., DictConfig], tracking_uri: str, mlflow_client, tmp_path: Path
) -> None:
    outcome = run_one(make_cfg(*WIDE), tmp_path / "run")
    run = mlflow_client.get_run(outcome.run_id)
    assert run.data.tags["fit"] == "overfit"
    assert "kept falling" in run.data.tags["fit.reason"]
    metrics = run.data.metrics
    diagnosis = outcome.result.diagnosis
    assert metrics["best_epoch"] == diagnosis.best_epoch
    assert metrics["gap_at_best"] == pytest.approx(diagnosis.gap_at_best)
    assert metrics["gap_final"] == pytest.approx(diagnosis.gap_final)
    assert metrics["gap_final"] > metrics["gap_at_best"]  # the gap widened as it overfit
    assert metrics["val_rise"] >= 0.25
    assert metrics["baseline_loss"] == pytest.approx(outcome.result.baseline_loss)
    artifacts = {a.path for a in mlflow_client.list_artifacts(outcome.run_id)}
    assert "curves.png" in artifacts
    assert [r.data.tags["fit"] for r in all_runs(mlflow_client, ["FINISHED"])] == ["overfit"]


@pytest.mark.parametrize(
    "noisy",
    [
        ["data.batch_size=4", "optimizer.lr=1e-2"],
        ["data.batch_size=8", "optimizer.lr=3e-2"],
    ],
)
def test_small_batches_at_a_high_learning_rate_wobble_but_are_not_overfit(
    train: Train, noisy: list[str]
) -> None:
    # Both curves scatter from epoch to epoch while early stopping halts a model that learned:
    # without smoothing, the last epochs' wobble read as overfitting.
    result = train("trainer.progress_bar=false", "trainer.max_epochs=300", *noisy)  # 400 students
    assert verdict(result) == "good", result.diagnosis.reason

"""Our Lightning models: the loss and metrics of the classifier and regressor (their task's,
study.task) on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from study.data import CLASSIFICATION, REGRESSION
from study.models import Classifier, Regressor
from study.task import MODELS, TASKS


def _sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_classifier_and_regressor_declare_their_tasks() -> None:
    assert Classifier.task == CLASSIFICATION
    assert Regressor.task == REGRESSION


def test_classifier_network_has_the_requested_inputs_and_outputs() -> None:
    model = Classifier(5, 3, _sgd, hidden_sizes=[4], activation="tanh")
    assert model(torch.zeros(2, 5)).shape == (2, 3)


def test_binary_classifier_uses_one_logit_with_binary_cross_entropy() -> None:
    model = Classifier(2, 1, _sgd, hidden_sizes=[4])
    logits = [2.0, -1.0, 0.5, -3.0]
    target = [1, 0, 0, 0]
    expected = -sum(
        math.log(_sigmoid(z)) if y else math.log(1 - _sigmoid(z))
        for z, y in zip(logits, target, strict=True)
    ) / len(target)
    metrics = model.metrics(torch.tensor(logits).unsqueeze(1), torch.tensor(target))
    assert metrics["loss"].item() == pytest.approx(expected, rel=1e-6)
    # positive logit -> class 1: predictions 1, 0, 1, 0 -> three of four right
    assert metrics["acc"].item() == pytest.approx(0.75)


def test_multiclass_classifier_uses_cross_entropy_and_argmax_accuracy() -> None:
    model = Classifier(2, 3, _sgd, hidden_sizes=[4])
    logits = [[2.0, 0.0, -1.0], [0.1, 0.2, 3.0], [1.0, 4.0, 0.0], [0.0, 0.0, 5.0]]
    target = [0, 2, 0, 1]  # argmax 0, 2, 1, 2 -> two of four right

    def nll(row: list[float], label: int) -> float:
        return -math.log(math.exp(row[label]) / sum(math.exp(v) for v in row))

    expected = sum(nll(row, y) for row, y in zip(logits, target, strict=True)) / len(target)
    metrics = model.metrics(torch.tensor(logits), torch.tensor(target))
    assert list(metrics) == ["loss", "acc"]
    assert metrics["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert metrics["acc"].item() == pytest.approx(0.5)


def test_classifier_training_loss_matches_its_metric_loss() -> None:
    model = Classifier(2, 3, _sgd, hidden_sizes=[4])
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    torch.testing.assert_close(model.loss(logits, target), model.metrics(logits, target)["loss"])


def test_regressor_rmse_and_mae_are_in_target_units() -> None:
    model = Regressor(2, 1, _sgd, hidden_sizes=[4], target_scale=10.0)
    outputs = torch.tensor([[1.0], [2.0], [3.0]])
    target = torch.tensor([1.0, 1.0, 5.0])  # errors 0, 1, -2 in standardized units
    metrics = model.metrics(outputs, target)
    assert list(metrics) == ["loss", "rmse", "mae", "r2"]
    assert metrics["loss"].item() == pytest.approx(5 / 3)  # MSE stays in standardized units
    assert metrics["rmse"].item() == pytest.approx(math.sqrt(5 / 3) * 10)
    assert metrics["mae"].item() == pytest.approx(1 * 10)


def test_regressor_r2_is_zero_for_the_mean_predictor() -> None:
    model = Regressor(2, 1, _sgd, hidden_sizes=[4], target_scale=3.0)
    target = torch.tensor([1.0, -2.0, 0.5, 4.0])
    outputs = torch.full((4, 1), target.mean().item())
    assert model.metrics(outputs, target)["r2"].item() == pytest.approx(0.0, abs=1e-6)


def test_regressor_r2_is_one_for_the_perfect_predictor() -> None:
    model = Regressor(2, 1, _sgd, hidden_sizes=[4], target_scale=3.0)
    target = torch.tensor([1.0, -2.0, 0.5, 4.0])
    metrics = model.metrics(target.unsqueeze(1), target)
    assert metrics["r2"].item() == pytest.approx(1.0)
    assert metrics["rmse"].item() == 0.0
    assert metrics["mae"].item() == 0.0


def test_regressor_r2_does_not_depend_on_target_scale() -> None:
    outputs, target = torch.tensor([[0.5], [0.0], [2.0]]), torch.tensor([1.0, -1.0, 1.5])
    small = Regressor(2, 1, _sgd, hidden_sizes=[4], target_scale=1.0).metrics(outputs, target)
    large = Regressor(2, 1, _sgd, hidden_sizes=[4], target_scale=50.0).metrics(outputs, target)
    assert small["r2"].item() == pytest.approx(large["r2"].item())
    assert large["rmse"].item() == pytest.approx(50 * small["rmse"].item())


def test_configure_optimizers_calls_the_optimizer_recipe_with_the_model_parameters() -> None:
    model = Regressor(2, 1, _sgd, hidden_sizes=[4])
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    optimized = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in optimized} == {id(p) for p in model.parameters()}


@pytest.mark.parametrize(
    ("module", "target"), [(Classifier, [0, 1, 0, 1]), (Regressor, [0.0, 1.0, 0.0, 1.0])]
)
def test_a_sweep_accepts_exactly_the_metrics_each_model_logs_every_epoch(
    module: type[Classifier | Regressor], target: list[float]
) -> None:
    from study.data import Split

    model = module(2, 1, _sgd, hidden_sizes=[4])
    split = Split(torch.zeros(4, 2), torch.tensor(target))
    logged = {*model.evaluate(split, "val"), "train/loss"}  # as in MLPModel.training_step
    assert set(TASKS[MODELS[f"study.models.{module.__name__}"]].epoch_metrics) == logged


def test_the_tasks_known_without_importing_our_models_are_theirs() -> None:
    """study.task names our models' tasks so that a packed worker need not import them."""
    assert {
        f"{cls.__module__}.{cls.__qualname__}": cls.task for cls in (Classifier, Regressor)
    } == MODELS

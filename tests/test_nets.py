"""The plain torch MLP: layer structure, activations, dropout and output shape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from study.nets import mlp


def test_mlp_has_one_dense_layer_per_hidden_size_then_an_output_layer() -> None:
    net = mlp(3, 2, [8, 4])
    linears = [layer for layer in net if isinstance(layer, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(3, 8), (8, 4), (4, 2)]
    assert [type(layer) for layer in net] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]


@pytest.mark.parametrize(
    ("name", "layer_type"),
    [
        ("relu", nn.ReLU),
        ("sigmoid", nn.Sigmoid),
        ("tanh", nn.Tanh),
        ("gelu", nn.GELU),
        ("leaky_relu", nn.LeakyReLU),
    ],
)
def test_mlp_puts_the_chosen_activation_after_each_hidden_layer(
    name: str, layer_type: type[nn.Module]
) -> None:
    net = mlp(2, 1, [5, 5, 5], activation=name)
    activations = [layer for layer in net if not isinstance(layer, nn.Linear)]
    assert len(activations) == 3
    assert all(type(layer) is layer_type for layer in activations)


def test_mlp_has_no_dropout_when_dropout_is_zero() -> None:
    net = mlp(2, 1, [8, 8], dropout=0.0)
    assert not any(isinstance(layer, nn.Dropout) for layer in net)


def test_mlp_adds_dropout_after_each_hidden_activation() -> None:
    net = mlp(2, 1, [8, 8], activation="tanh", dropout=0.3)
    assert [type(layer) for layer in net] == [
        nn.Linear,
        nn.Tanh,
        nn.Dropout,
        nn.Linear,
        nn.Tanh,
        nn.Dropout,
        nn.Linear,
    ]
    assert all(layer.p == 0.3 for layer in net if isinstance(layer, nn.Dropout))


def test_mlp_outputs_are_raw_not_squashed_by_a_final_activation() -> None:
    net = mlp(4, 2, [6], activation="sigmoid")
    with torch.no_grad():
        net[-1].weight.zero_()
        net[-1].bias.copy_(torch.tensor([5.0, -5.0]))
    torch.testing.assert_close(net(torch.randn(3, 4)), torch.tensor([[5.0, -5.0]] * 3))


@pytest.mark.parametrize(("batch", "n_in", "n_out"), [(7, 5, 3), (1, 2, 1), (32, 64, 10)])
def test_mlp_output_shape_is_batch_by_out_features(batch: int, n_in: int, n_out: int) -> None:
    assert mlp(n_in, n_out, [16, 8])(torch.randn(batch, n_in)).shape == (batch, n_out)

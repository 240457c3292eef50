"""A plain torch multilayer perceptron: dense layers, a nonlinearity and dropout between them."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


def mlp(
    in_features: int,
    out_features: int,
    hidden_sizes: Sequence[int],
    activation: str = "relu",
    dropout: float = 0.0,
) -> nn.Sequential:
    """in -> [Linear -> activation -> Dropout] per hidden size -> Linear -> out (raw outputs)."""
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden_sizes:
        layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)

"""A plain torch multilayer perceptron: dense layers, a nonlinearity and dropout between them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

# Names of torch.nn modules, resolved when a network is built: config checks need only the
# names, and should not pay for importing torch.
ACTIVATIONS = {
    "relu": "ReLU",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "gelu": "GELU",
    "leaky_relu": "LeakyReLU",
}


def mlp(
    in_features: int,
    out_features: int,
    hidden_sizes: Sequence[int],
    activation: str = "relu",
    dropout: float = 0.0,
) -> nn.Sequential:
    """in -> [Linear -> activation -> Dropout] per hidden size -> Linear -> out (raw outputs)."""
    from torch import nn

    layers: list[nn.Module] = []
    width = in_features
    for size in hidden_sizes:
        layers += [nn.Linear(width, size), getattr(nn, ACTIVATIONS[activation])()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)

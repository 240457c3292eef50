"""K same-shaped MLPs as one network: each member's weights in its own flat leaf tensor, stacked
in forward and run with batched matmuls (`torch.baddbmm`), with a dropout rate per member.

A member's numbers must not depend on its pack mates. On CPU a batched matmul of one matrix
takes another kernel than the same matrix among several (a `bmm` of batch 1 with one output
column goes through gemv), so a lone member runs beside a detached copy of itself (`GHOST`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from study.nets import ACTIVATIONS, mlp

# Below this many members a stacked pass pads itself with detached copies (see the docstring).
GHOST = 2


@dataclass(frozen=True)
class Arch:
    """What every member of a pack shares: the network's shape."""

    in_features: int
    out_features: int
    hidden_sizes: tuple[int, ...]
    activation: str = "relu"

    @property
    def widths(self) -> list[int]:
        return [self.in_features, *self.hidden_sizes, self.out_features]


class StackedMLP(nn.Module):
    """`slots` members of one architecture; a member's weights and biases are one flat tensor
    (layer by layer: weight as [in, out], then bias), so it is one parameter group of an
    optimizer, and its slot can be re-initialized and its optimizer state cleared alone."""

    def __init__(self, arch: Arch, slots: int) -> None:
        super().__init__()
        self.arch = arch
        widths = arch.widths
        self.shapes = list(pairwise(widths))
        self.size = sum(fan_in * fan_out + fan_out for fan_in, fan_out in self.shapes)
        self.slots = nn.ParameterList(nn.Parameter(torch.zeros(self.size)) for _ in range(slots))
        self.activation = getattr(nn, ACTIVATIONS[arch.activation])()

    @property
    def hidden_units(self) -> int:
        """Units that dropout can zero in one row: all hidden layers together."""
        return sum(self.arch.hidden_sizes)

    def initial_weights(self, seed: int) -> torch.Tensor:
        """The flat weights `study.nets.mlp` starts with after `torch.manual_seed(seed)`: what a
        single run with this seed starts from."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = self._template()
        linears = [module for module in net if isinstance(module, nn.Linear)]
        parts = [t for lin in linears for t in (lin.weight.detach().t().reshape(-1), lin.bias)]
        return torch.cat(parts).detach()

    def state_dict_of(self, flat: torch.Tensor, dropout: float = 0.0) -> dict[str, torch.Tensor]:
        """`flat` as the state dict of `study.models.MLPModel` (keys `net.0.weight`, ...), so a
        member's checkpoint loads into the model a single run builds."""
        net = self._template(dropout)
        linears = [module for module in net if isinstance(module, nn.Linear)]
        with torch.no_grad():
            for linear, (weight, bias) in zip(linears, self.unflatten(flat[None]), strict=True):
                linear.weight.copy_(weight[0].t())
                linear.bias.copy_(bias[0, 0])
        return {f"net.{key}": value for key, value in net.state_dict().items()}

    def unflatten(self, flats: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[K, size] -> per layer (weights [K, in, out], biases [K, 1, out]), as views."""
        layers, start, k = [], 0, flats.shape[0]
        for fan_in, fan_out in self.shapes:
            weight = flats[:, start : start + fan_in * fan_out].view(k, fan_in, fan_out)
            start += fan_in * fan_out
            layers.append((weight, flats[:, start : start + fan_out].unsqueeze(1)))
            start += fan_out
        return layers

    def forward(
        self, flats: torch.Tensor, x: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[K, size] weights and [K, rows, in] inputs -> [K, rows, out].

        `keep`: [K, rows, hidden_units] dropout multipliers (0 or 1/(1 - rate)), or None for no
        dropout. Callers stack at least GHOST members (`ghosted`).
        """
        layers = self.unflatten(flats)
        hidden = x
        start = 0
        for weight, bias in layers[:-1]:
            hidden = self.activation(torch.baddbmm(bias, hidden, weight))
            if keep is not None:
                width = weight.shape[2]
                hidden = hidden * keep[:, :, start : start + width]
                start += width
        weight, bias = layers[-1]
        return torch.baddbmm(bias, hidden, weight)

    def _template(self, dropout: float = 0.0) -> nn.Sequential:
        arch = self.arch
        return mlp(
            arch.in_features, arch.out_features, list(arch.hidden_sizes), arch.activation, dropout
        )


def ghosted(params: Sequence[torch.Tensor], *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Stack `params` into [K, size], padded to GHOST members with detached copies of the last
    (no gradient reaches it through them), and pad each of `tensors` ([K, ...]) alike."""
    missing = GHOST - len(params)
    if missing <= 0:
        return [torch.stack(list(params)), *tensors]
    stacked = torch.stack([*params, *[params[-1].detach()] * missing])
    padded = [torch.cat([t, *[t[-1:]] * missing]) for t in tensors]
    return [stacked, *padded]


def dropout_keep(uniform: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
    """[K, rows, units] uniforms in [0, 1) and [K] rates -> multipliers: 0 with probability
    rate, else 1 / (1 - rate), as `nn.Dropout` scales."""
    rates = rates[:, None, None]
    return (uniform >= rates).to(uniform.dtype) / (1 - rates)

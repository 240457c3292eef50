"""A pack's members, the slots they train in, and which rows each trains on, step by step,
through one epoch."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from study.epochs import EpochJudge, EpochReport, EpochRules


@dataclass
class Member:
    """One trial in a pack: its settings, then what training made of it."""

    seed: int
    lr: float
    weight_decay: float = 0.0
    dropout: float = 0.0
    batch_size: int = 32
    rules: EpochRules = field(default_factory=EpochRules)
    report: EpochReport | None = None  # told each epoch's row (a trial's pruner)
    key: Any = None  # the caller's handle (e.g. an Optuna trial)
    history: list[dict[str, float]] = field(default_factory=list)
    judge: EpochJudge | None = None  # its epochs under `rules`, from its first epoch on
    best_weights: torch.Tensor | None = None  # flat; `StackedMLP.state_dict_of` unpacks it
    final_weights: torch.Tensor | None = None
    error: Exception | None = None  # what `report` raised, when stop_reason is FAILED
    test_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def stop_reason(self) -> str | None:
        return self.judge.stop_reason if self.judge is not None else None

    @property
    def best_epoch(self) -> int:
        return self.judge.best_epoch if self.judge is not None else 0


# Offsets a member's dropout stream from its batch-order stream (both come from its seed).
_NOISE_OFFSET = 0x9E3779B9


class Slot:
    """A member in a pack slot, with its own random streams: batch order and dropout masks."""

    def __init__(self, index: int, member: Member, device: torch.device) -> None:
        self.index = index
        self.member = member
        # Like study.data.Batches: one CPU generator seeded once, a permutation per epoch.
        self.order = torch.Generator().manual_seed(member.seed)
        self.noise = torch.Generator(device).manual_seed(member.seed + _NOISE_OFFSET)

    def steps(self, n: int) -> int:
        return -(-n // self.member.batch_size)


@dataclass
class Group:
    """Members that run stacked in one pass: the same row count. Sorted by steps (descending),
    so the members with a batch at step s are the first `participants[s]`."""

    slots: list[Slot]
    rows: int
    index: torch.Tensor  # [steps, K, rows] training-row ids (0 in padding)
    mask: torch.Tensor  # [steps, K, rows] True for real rows
    counts: torch.Tensor  # [steps, K] real rows
    participants: list[int]
    rates: torch.Tensor  # [K] dropout rates
    loss_sums: torch.Tensor = field(init=False)  # [K] sum over the epoch of loss x rows

    def __post_init__(self) -> None:
        self.loss_sums = torch.zeros(len(self.slots), device=self.index.device)

    @property
    def steps(self) -> int:
        return len(self.participants)


class EpochPlan:
    """One epoch's mini-batches of every active member, grouped by row count: each member's
    batch size, or `pad_rows` for all."""

    def __init__(
        self, slots: list[Slot], n: int, pad_rows: int | None, device: torch.device
    ) -> None:
        by_rows: dict[int, list[Slot]] = {}
        for slot in slots:
            by_rows.setdefault(pad_rows or slot.member.batch_size, []).append(slot)
        self.groups = [_group(members, n, rows, device) for rows, members in by_rows.items()]
        self.steps = max(group.steps for group in self.groups)
        # Slot indices of the members with a batch at each step.
        self.stepping = [
            [
                slot.index
                for group in self.live(step)
                for slot in group.slots[: group.participants[step]]
            ]
            for step in range(self.steps)
        ]

    def live(self, step: int) -> Iterator[Group]:
        return (group for group in self.groups if step < group.steps)

    def mean_losses(self, n: int) -> dict[int, float]:
        """Each member's training loss over the epoch, by slot index (one device sync)."""
        slots = [slot.index for group in self.groups for slot in group.slots]
        losses = (torch.cat([group.loss_sums for group in self.groups]) / n).tolist()
        return dict(zip(slots, losses, strict=True))


def _group(slots: list[Slot], n: int, rows: int, device: torch.device) -> Group:
    slots = sorted(slots, key=lambda slot: -slot.steps(n))
    steps = slots[0].steps(n)
    batches = [_batches(slot, n, rows, steps, device) for slot in slots]
    index = torch.stack([b[0] for b in batches], dim=1)
    mask = torch.stack([b[1] for b in batches], dim=1)
    rates = torch.tensor([slot.member.dropout for slot in slots], device=device)
    participants = [sum(slot.steps(n) > step for slot in slots) for step in range(steps)]
    return Group(slots, rows, index, mask, mask.sum(dim=2).float(), participants, rates)


def _batches(
    slot: Slot, n: int, rows: int, steps: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A member's epoch as [steps, rows] row ids and mask: its shuffled rows in batch-size
    chunks, each padded to `rows`, then padding steps after its last batch."""
    size, own_steps = slot.member.batch_size, slot.steps(n)
    order = torch.randperm(n, generator=slot.order).to(device)
    index = F.pad(order, (0, own_steps * size - n)).view(own_steps, size)
    mask = (torch.arange(own_steps * size, device=device) < n).view(own_steps, size)
    padding = (0, rows - size, 0, steps - own_steps)
    return F.pad(index, padding), F.pad(mask, padding)

"""Packed trials: K members (trials of one architecture and optimizer type) trained at once.

`PackLoop` trains a `StackedMLP`, an epoch of every active member at a time. Each member has
its own parameter group (lr, weight decay), dropout rate, batch size, initialization, batch
order and dropout masks, drawn from its own seed only, so its numbers do not depend on which
members share its pack: `train_alone` reproduces a packed member exactly on CPU. After each
epoch each member's row is judged by the epoch rules every engine shares (study.epochs:
divergence, its report such as a pruner, early stopping, max_epochs); a member that stops
frees its slot for the next member of the source. Its loss and metrics are its task's
(study.task), the code a single run calls.

Rows: each member's mini-batches are `pad_rows` rows, its own batch size padded with masked-out
rows, or (`pad_rows=None`) exactly its batch size, with one stacked pass per batch size a step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch

from study.data import Split, Splits
from study.epochs import EpochJudge
from study.packed.network import Arch, StackedMLP, dropout_keep, ghosted
from study.packed.schedule import EpochPlan, Group, Member, Slot
from study.task import TASKS

OptimizerRecipe = Callable[..., torch.optim.Optimizer]  # a functools.partial of a torch optimizer
MemberSource = Callable[[], "Member | None"]

DoneHook = Callable[[Member], None]  # told each member's end


class PackLoop:
    """Trains members from `source` in `slots` slots until the source is exhausted.

    A plain loop, not a Lightning module: Lightning's Trainer would only run this loop (each
    member's optimization, stopping and checkpoint are its own), and importing Lightning cost
    each packed worker ~5 s of its start here, as much as importing torch and MLflow together.
    """

    def __init__(
        self,
        arch: Arch,
        splits: Splits,
        optimizer: OptimizerRecipe,
        source: MemberSource,
        slots: int,
        pad_rows: int | None = None,
        on_member_done: DoneHook | None = None,
    ) -> None:
        self.device = splits.train.x.device
        self.net = StackedMLP(arch, slots).to(self.device)
        self.splits = splits
        self.task = TASKS[splits.task]
        self.baseline_loss = splits.baseline_loss()
        self.source = source
        self.pad_rows = pad_rows
        self.on_member_done = on_member_done
        groups = [{"params": [p], "lr": 0.0, "weight_decay": 0.0} for p in self.net.slots]
        self.optimizer = optimizer(groups, **_fused_if_offered(optimizer))
        self.active: dict[int, Slot] = {}
        self.done: list[Member] = []

    def train(self) -> list[Member]:
        """Every member of the source trained; the members in the order they finished."""
        self._refill()
        while self.active:
            self.epoch()
        return self.done

    def epoch(self) -> None:
        """One epoch of every active member, then each one's validation and stopping checks;
        free slots take the source's next members."""
        train_losses = self._train_epoch(self.splits.train)
        slots = list(self.active.values())
        flats = [self.net.slots[slot.index] for slot in slots]
        rows = self.evaluate(flats, self.splits.val, "val")
        for slot, row in zip(slots, rows, strict=True):
            row["train/loss"] = train_losses[slot.index]
            self._end_member_epoch(slot, row)
        self._refill()

    def _train_epoch(self, train: Split) -> dict[int, float]:
        """One epoch of every active member; the mean training loss of each (by slot)."""
        plan = EpochPlan(list(self.active.values()), len(train), self.pad_rows, train.x.device)
        optimizer = self.optimizer
        every_group = optimizer.param_groups
        for step in range(plan.steps):
            optimizer.zero_grad(set_to_none=True)  # members without a batch this step keep none
            total = sum(self._group_step(group, step, train) for group in plan.live(step))
            total.backward()  # type: ignore[union-attr]
            # A torch optimizer visits every group, ~20 us each even without gradients (a third
            # of a 64-member step): show it only the groups of members that had a batch.
            optimizer.param_groups = [every_group[i] for i in plan.stepping[step]]
            try:
                optimizer.step()
            finally:
                optimizer.param_groups = every_group
        return plan.mean_losses(len(train))

    def _group_step(self, group: Group, step: int, train: Split) -> torch.Tensor:
        n = group.participants[step]
        index, mask = group.index[step, :n], group.mask[step, :n]
        counts = group.counts[step, :n]
        keep = self._dropout(group, n)
        params = [self.net.slots[slot.index] for slot in group.slots[:n]]
        flats, x, y, valid, *rest = ghosted(
            params, train.x[index], train.y[index], mask, *([keep] if keep is not None else [])
        )
        outputs = self.net(flats, x, rest[0] if rest else None)
        sums = torch.where(valid, self.task.loss(outputs, y), 0.0).sum(dim=1)[:n]
        losses = sums / counts
        group.loss_sums[:n] += losses.detach() * counts
        return losses.sum()

    def _dropout(self, group: Group, n: int) -> torch.Tensor | None:
        """Dropout multipliers of the first `n` members of `group`: each member draws its own
        batch-size rows from its own generator (padding rows keep every unit)."""
        slots = group.slots[:n]
        if not any(slot.member.dropout > 0 for slot in slots):
            return None  # multiplying by 1 would change no bit
        uniform = torch.ones(n, group.rows, self.net.hidden_units, device=self.device)
        for i, slot in enumerate(slots):
            if slot.member.dropout > 0:
                uniform[i, : slot.member.batch_size].uniform_(generator=slot.noise)
        return dropout_keep(uniform, group.rates[:n])

    @torch.no_grad()
    def evaluate(
        self, flats: list[torch.Tensor], split: Split, prefix: str
    ) -> list[dict[str, float]]:
        """Metrics of a whole split per member (dropout off), one device sync for all."""
        k = len(flats)
        stacked, x = ghosted(flats, split.x.expand(k, -1, -1).contiguous())
        metrics = self.task.metrics(self.net(stacked, x), split.y, self.splits.target_scale)
        values = torch.stack([value[:k] for value in metrics.values()], dim=1).tolist()
        return [
            {f"{prefix}/{name}": v for name, v in zip(metrics, row, strict=True)} for row in values
        ]

    def _end_member_epoch(self, slot: Slot, values: dict[str, float]) -> None:
        member = slot.member
        row = {"epoch": float(len(member.history) + 1), **values}
        member.history.append(row)
        judge = member.judge
        assert judge is not None  # made when the member took its slot
        try:
            if judge.end_epoch(row):
                member.best_weights = self.net.slots[slot.index].detach().clone()
        except Exception as error:  # its report failed: the member fails, its pack mates go on
            member.error = error
        if judge.stop_reason is not None:
            self._finish(slot)

    def _finish(self, slot: Slot) -> None:
        """Best weights back, their test metrics; the slot is free for the next member."""
        member = slot.member
        member.final_weights = self.net.slots[slot.index].detach().clone()
        weights = member.best_weights if member.best_weights is not None else member.final_weights
        member.test_metrics = self.evaluate([weights], self.splits.test, "test")[0]
        del self.active[slot.index]
        self.done.append(member)
        if self.on_member_done is not None:
            self.on_member_done(member)

    def _refill(self) -> None:
        """Free slots take the source's next members; a source with none now (None) is asked
        again at the next epoch boundary, and the pack ends when it has none left to train."""
        free = [i for i in range(len(self.net.slots)) if i not in self.active]
        for index in free:
            member = self.source()
            if member is None:
                return
            self._start(index, member)

    def _start(self, index: int, member: Member) -> None:
        """Put `member` in slot `index`: its initial weights, a fresh optimizer state, its lr."""
        param = self.net.slots[index]
        with torch.no_grad():
            param.copy_(self.net.initial_weights(member.seed))
        optimizer = self.optimizer
        optimizer.state.pop(param, None)
        group = optimizer.param_groups[index]
        group["lr"], group["weight_decay"] = member.lr, member.weight_decay
        member.judge = EpochJudge(member.rules, self.baseline_loss, member.report)
        self.active[index] = Slot(index, member, self.device)


def _fused_if_offered(recipe: OptimizerRecipe) -> dict[str, bool]:
    """Fused kernels where the optimizer has them: one call per member instead of a dozen."""
    target = getattr(recipe, "func", recipe)
    return {"fused": True} if "fused" in inspect.signature(target).parameters else {}


def train_pack(
    members: Iterable[Member] | MemberSource,
    splits: Splits,
    arch: Arch,
    optimizer: OptimizerRecipe,
    slots: int,
    pad_rows: int | None = None,
    on_member_done: DoneHook | None = None,
) -> list[Member]:
    """Train `members` (an iterable, or a callable returning the next or None) `slots` at a
    time on `splits`; the members in the order they finished."""
    source = members if callable(members) else _next_of(iter(members))
    return PackLoop(arch, splits, optimizer, source, slots, pad_rows, on_member_done).train()


def train_alone(
    member: Member, splits: Splits, arch: Arch, optimizer: OptimizerRecipe,
    pad_rows: int | None = None,
) -> Member:  # fmt: skip
    """One member through the packed code path: how a packed trial is reproduced."""
    return train_pack([member], splits, arch, optimizer, 1, pad_rows)[0]


def _next_of(members: Any) -> MemberSource:
    return lambda: next(members, None)

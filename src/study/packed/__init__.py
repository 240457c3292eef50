"""The packed engine: many trials of one architecture trained at once as one stacked network.

- `network`: the stacked network (K same-shaped MLPs, batched matmuls, dropout per member);
- `schedule`: a pack's members, their slots, and each epoch's mini-batches;
- `loop`: the training loop (epochs, the shared epoch rules, refilling free slots);
- `from_config`: the bridge from a run's config (a member, a FitResult, a rerun alone).

Free of Lightning: a packed sweep worker never imports it.
"""

from study.packed.from_config import (
    PACKED,
    arch_of,
    fit_packed,
    is_packed,
    member_of,
    optimizer_of,
    packed_result,
)
from study.packed.loop import PackLoop, train_alone, train_pack
from study.packed.network import Arch, StackedMLP
from study.packed.schedule import Member

__all__ = [
    "PACKED",
    "Arch",
    "Member",
    "PackLoop",
    "StackedMLP",
    "arch_of",
    "fit_packed",
    "is_packed",
    "member_of",
    "optimizer_of",
    "packed_result",
    "train_alone",
    "train_pack",
]

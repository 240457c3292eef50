"""Packed trials: tiny real runs of several members trained at once as one stacked model."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping

import pytest
import torch

from study.data import CLASSIFICATION, REGRESSION, LectureData, SklearnData, Split, Splits
from study.epochs import EpochRules
from study.models import Classifier
from study.packed import Arch, Member, StackedMLP, train_alone, train_pack

ADAM = functools.partial(torch.optim.Adam, lr=1e-3)
SGD = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9)
ARCH = Arch(2, 1, (16, 16))


@pytest.fixture(scope="module")
def lecture() -> Splits:
    return LectureData(n_samples=200, seed=0).prepare(CLASSIFICATION)


def _mixed(epochs: int = 4) -> list[Member]:
    """Members with every batch size of the default search space and different dropout."""
    settings = [(16, 0.0, 3e-3), (32, 0.3, 1e-2), (64, 0.1, 1e-3), (128, 0.5, 3e-2)]
    return [
        Member(
            seed=10 + i, lr=lr, dropout=rate, batch_size=size, rules=EpochRules(max_epochs=epochs)
        )
        for i, (size, rate, lr) in enumerate(settings)
    ]


def _by_seed(members: list[Member]) -> dict[int, Member]:
    return {member.seed: member for member in members}


@pytest.mark.parametrize("pad_rows", [None, 128])
def test_a_member_trains_alone_exactly_as_in_its_pack(
    lecture: Splits, pad_rows: int | None
) -> None:
    packed = _by_seed(train_pack(_mixed(), lecture, ARCH, ADAM, slots=4, pad_rows=pad_rows))
    assert len(packed) == 4
    for member in _mixed():
        alone = train_alone(member, lecture, ARCH, ADAM, pad_rows=pad_rows)
        twin = packed[member.seed]
        assert alone.history == twin.history
        assert alone.test_metrics == twin.test_metrics
        assert alone.best_weights is not None and twin.best_weights is not None
        assert torch.equal(alone.best_weights, twin.best_weights)


def test_history_rows_and_test_metrics_match_a_single_classifier_run(lecture: Splits) -> None:
    (member,) = train_pack(_mixed(epochs=3)[:1], lecture, ARCH, ADAM, slots=2)
    assert [row["epoch"] for row in member.history] == [1, 2, 3]
    assert all(
        set(row) == {"epoch", "train/loss", "val/loss", "val/acc"} for row in member.history
    )
    assert set(member.test_metrics) == {"test/loss", "test/acc"}
    assert member.stop_reason == "max_epochs"


def test_a_member_starts_from_the_weights_a_single_run_with_its_seed_starts_from() -> None:
    net = StackedMLP(ARCH, slots=1)
    torch.manual_seed(7)
    single = Classifier(2, 1, ADAM, hidden_sizes=[16, 16], dropout=0.2)
    packed = net.state_dict_of(net.initial_weights(7), dropout=0.2)
    assert packed.keys() == single.state_dict().keys()
    assert all(torch.equal(packed[key], value) for key, value in single.state_dict().items())


def test_each_member_learns_at_its_own_learning_rate_and_dropout(lecture: Splits) -> None:
    slow, fast, dropped = (
        Member(seed=1, lr=1e-5, rules=EpochRules(max_epochs=8)),
        Member(seed=1, lr=1e-2, rules=EpochRules(max_epochs=8)),
        Member(seed=1, lr=1e-2, dropout=0.3, rules=EpochRules(max_epochs=8)),
    )
    train_pack([slow, fast, dropped], lecture, ARCH, ADAM, slots=3)
    start = StackedMLP(ARCH, 1).initial_weights(1)
    assert slow.final_weights is not None
    assert (slow.final_weights - start).abs().max() < 1e-3
    assert fast.history[-1]["val/loss"] < 0.5 * fast.history[0]["val/loss"]
    assert slow.history[-1]["val/loss"] > 0.95 * slow.history[0]["val/loss"]
    assert fast.history[-1]["val/acc"] > 0.85
    assert dropped.history[0]["train/loss"] != fast.history[0]["train/loss"]


def test_dropout_draws_new_masks_every_step(lecture: Splits) -> None:
    # With lr 0 the weights stay put: an epoch's mean loss moves only with the masks.
    still = Member(seed=2, lr=0.0, rules=EpochRules(max_epochs=2))
    masked = Member(seed=2, lr=0.0, dropout=0.5, rules=EpochRules(max_epochs=2))
    train_pack([still, masked], lecture, ARCH, SGD, slots=2)
    assert still.history[0]["train/loss"] == pytest.approx(
        still.history[1]["train/loss"], abs=1e-6
    )
    assert abs(masked.history[0]["train/loss"] - masked.history[1]["train/loss"]) > 1e-3
    assert masked.history[0]["val/loss"] == still.history[0]["val/loss"]  # no dropout in eval


def test_a_member_that_blows_up_stops_as_diverged_and_leaves_its_mates_untouched(
    lecture: Splits,
) -> None:
    def calm() -> list[Member]:
        return [
            Member(seed=3, lr=0.01, batch_size=32, rules=EpochRules(max_epochs=3)),
            *_mixed(3)[2:],
        ]

    wild = Member(seed=4, lr=1e9, batch_size=16, dropout=0.2, rules=EpochRules(max_epochs=3))
    with_wild = train_pack([wild, *calm()], lecture, ARCH, SGD, slots=4)
    without = _by_seed(train_pack(calm(), lecture, ARCH, SGD, slots=4))
    assert wild.stop_reason == "diverged"
    assert len(wild.history) == 1
    assert not math.isfinite(wild.history[0]["train/loss"])
    for member in with_wild[1:]:
        assert member.history == without[member.seed].history
        assert all(math.isfinite(row["train/loss"]) for row in member.history)


def test_each_member_decays_its_weights_by_its_own_weight_decay(lecture: Splits) -> None:
    plain = Member(seed=6, lr=0.05, rules=EpochRules(max_epochs=4, patience=None))
    decayed = Member(
        seed=6, lr=0.05, weight_decay=0.5, rules=EpochRules(max_epochs=4, patience=None)
    )
    train_pack([plain, decayed], lecture, ARCH, SGD, slots=2)
    assert plain.final_weights is not None and decayed.final_weights is not None
    assert decayed.final_weights.norm() < 0.9 * plain.final_weights.norm()
    assert decayed.history[-1]["train/loss"] != plain.history[-1]["train/loss"]
    # The decay is the member's own: alone, the plain member learns exactly as beside it.
    alone = train_alone(
        Member(seed=6, lr=0.05, rules=EpochRules(max_epochs=4, patience=None)), lecture, ARCH, SGD
    )
    assert alone.history == plain.history


def test_a_finite_training_loss_above_the_diverge_level_stops_the_member_as_diverged(
    lecture: Splits,
) -> None:
    # 0.5 x the baseline: the first epoch's loss of any member is above it, and finite.
    low_level = EpochRules(max_epochs=4, diverge_level=0.5)
    (low,) = train_pack([Member(seed=7, lr=1e-3, rules=low_level)], lecture, ARCH, ADAM, 1)
    assert (low.stop_reason, len(low.history)) == ("diverged", 1)
    assert math.isfinite(low.history[0]["train/loss"])
    assert low.history[0]["train/loss"] > 0.5 * lecture.baseline_loss()
    (calm,) = train_pack(
        [Member(seed=7, lr=1e-3, rules=EpochRules(max_epochs=4))], lecture, ARCH, ADAM, slots=1
    )
    assert (calm.stop_reason, len(calm.history)) == ("max_epochs", 4)


def test_a_nan_validation_loss_with_a_finite_training_loss_stops_the_member_as_diverged(
    lecture: Splits,
) -> None:
    x = lecture.val.x.clone()
    x[0, 0] = math.nan  # one validation row the network cannot score
    broken = dataclasses.replace(lecture, val=Split(x, lecture.val.y))
    (member,) = train_pack(
        [Member(seed=8, lr=1e-3, rules=EpochRules(max_epochs=4))], broken, ARCH, ADAM, slots=1
    )
    assert (member.stop_reason, len(member.history)) == ("diverged", 1)
    assert math.isfinite(member.history[0]["train/loss"])
    assert math.isnan(member.history[0]["val/loss"])


def test_freed_slots_take_the_next_members_until_the_source_runs_out(lecture: Splits) -> None:
    members = [
        Member(seed=20 + i, lr=3e-3, batch_size=32, rules=EpochRules(max_epochs=2 + i))
        for i in range(6)
    ]
    done: list[int] = []
    finished = train_pack(
        iter(members), lecture, ARCH, ADAM, slots=3, on_member_done=lambda m: done.append(m.seed)
    )
    assert sorted(done) == [m.seed for m in members] == sorted(m.seed for m in finished)
    for member in members:
        assert [row["epoch"] for row in member.history] == list(
            range(1, member.rules.max_epochs + 1)
        )
    # The last member took a used slot: fresh weights and optimizer state, as if alone.
    last = members[-1]
    alone = train_alone(Member(seed=last.seed, lr=3e-3, rules=last.rules), lecture, ARCH, ADAM)
    assert alone.history == last.history


def test_early_stopping_stops_each_member_patience_epochs_after_its_best(
    lecture: Splits,
) -> None:
    stopping = Member(seed=5, lr=0.05, batch_size=16, rules=EpochRules(max_epochs=60, patience=2))
    patient = Member(seed=5, lr=1e-3, batch_size=16, rules=EpochRules(max_epochs=6, patience=None))
    train_pack([stopping, patient], lecture, Arch(2, 1, (32, 32)), ADAM, slots=2)
    losses = [row["val/loss"] for row in stopping.history]
    assert stopping.stop_reason == "early_stopped"
    assert stopping.judge.best_val_loss == min(losses)
    assert len(losses) == stopping.best_epoch + 2 < 60
    assert patient.stop_reason == "max_epochs" and len(patient.history) == 6


def test_the_epoch_hook_can_prune_a_member_and_a_failing_hook_fails_only_it(
    lecture: Splits,
) -> None:
    def report(key: str) -> Callable[[Mapping[str, float]], str | None]:
        def hear(row: Mapping[str, float]) -> str | None:
            if key == "boom":
                raise RuntimeError("storage unreachable")
            return "pruned" if key == "prune" and row["epoch"] == 2 else None

        return hear

    keys = ["prune", "boom", "keep"]
    members = [
        Member(seed=i, lr=1e-3, rules=EpochRules(max_epochs=4), report=report(key))
        for i, key in enumerate(keys)
    ]
    train_pack(members, lecture, ARCH, ADAM, slots=3)
    pruned, failed, kept = members
    assert (pruned.stop_reason, len(pruned.history)) == ("pruned", 2)
    assert (failed.stop_reason, len(failed.history)) == ("failed", 1)
    assert isinstance(failed.error, RuntimeError)
    assert (kept.stop_reason, len(kept.history)) == ("max_epochs", 4)


def test_a_regressor_pack_reports_errors_in_target_units() -> None:
    splits = SklearnData("diabetes", seed=0).prepare(REGRESSION)
    arch = Arch(splits.n_features, 1, (16,))
    members = [
        Member(seed=i, lr=1e-2, batch_size=32, rules=EpochRules(max_epochs=5)) for i in range(3)
    ]
    train_pack(members, splits, arch, ADAM, slots=3)
    for member in members:
        first, last = member.history[0], member.history[-1]
        assert set(last) == {"epoch", "train/loss", "val/loss", "val/rmse", "val/mae", "val/r2"}
        assert last["val/r2"] > first["val/r2"] and last["val/r2"] > 0.2
        assert last["val/rmse"] == pytest.approx(math.sqrt(last["val/loss"]) * splits.target_scale)
        assert set(member.test_metrics) == {"test/loss", "test/rmse", "test/mae", "test/r2"}


def test_a_source_with_no_member_now_is_asked_again_at_the_next_epoch(lecture: Splits) -> None:
    """A sweep's source has no trial while the study's last ones run: the pack trains on and
    asks again, instead of waiting for trials it holds itself or giving up on a retry."""
    first = Member(seed=1, lr=3e-3, rules=EpochRules(max_epochs=4))
    later = Member(seed=2, lr=3e-3, rules=EpochRules(max_epochs=2))
    answers: list[Member | None] = [first, None, None, later]
    asked: list[int] = []

    def source() -> Member | None:
        asked.append(len(first.history))
        return answers.pop(0) if answers else None

    finished = train_pack(source, lecture, ARCH, ADAM, slots=2)
    assert [m.seed for m in finished] == [1, 2]
    assert asked[:4] == [0, 0, 1, 2]  # the free slot asked again after each epoch
    assert len(later.history) == 2

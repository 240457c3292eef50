"""A dataset's table, its seeded split standardized by the training rows, the splits as tensors on
the training device, and in-memory batching."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from study.errors import UserError
from study.task import CLASSIFICATION, REGRESSION

if TYPE_CHECKING:  # torch is imported where tensors are made: a sweep checks data without it
    import torch

TASKS = (CLASSIFICATION, REGRESSION)


@dataclass(frozen=True)
class Table:
    """Raw features and target of one dataset, before splitting."""

    features: np.ndarray  # (n, d) float
    target: np.ndarray  # (n,) int class ids for classification, float for regression
    task: str
    name: str
    classes: tuple[str, ...] = ()  # text class labels, in class-id order ("" : numeric ids)

    @property
    def n_classes(self) -> int:
        return int(self.target.max()) + 1 if self.task == CLASSIFICATION else 0

    def fingerprint(self) -> str:
        """A short hash of the exact numbers, so two runs can tell they saw the same data."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.features, dtype=np.float64).tobytes())
        digest.update(np.ascontiguousarray(self.target, dtype=np.float64).tobytes())
        if self.classes:  # yes/no and no/yes give the same ids but are not the same data
            digest.update("\n".join(self.classes).encode())
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split
    test: Split
    n_features: int
    n_outputs: int  # logits for classification (1 for binary), 1 for regression
    task: str
    fingerprint: str
    target_scale: float = 1.0  # regression targets are standardized; metrics scale back by this
    classes: tuple[str, ...] = ()  # text class labels, in class-id order

    def baseline_loss(self) -> float:
        """The training loss of the best constant predictor: the unit of the fit diagnosis."""
        import torch

        target = self.train.y
        if self.task == REGRESSION:
            return float(((target - target.mean()) ** 2).mean())  # predict the mean
        frequencies = torch.bincount(target).float() / len(target)  # the class frequencies
        frequencies = frequencies[frequencies > 0]
        return float(-(frequencies * frequencies.log()).sum())


class Batches:
    """Mini-batches sliced from tensors that already live on the training device.

    Cheaper than a DataLoader over a TensorDataset: no collation, no per-sample indexing, and
    no host-to-device copy per step. Shuffling is seeded per epoch, so runs are reproducible.
    """

    def __init__(self, split: Split, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        import torch

        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        import torch

        x, y, n = self.split.x, self.split.y, len(self.split)
        if not self.shuffle:
            for start in range(0, n, self.batch_size):
                yield x[start : start + self.batch_size], y[start : start + self.batch_size]
            return
        order = torch.randperm(n, generator=self._generator).to(x.device)
        for index in order.split(self.batch_size):
            yield x[index], y[index]


class TabularData:
    """A tabular dataset with a seeded train/validation/test split and batching settings.

    Subclasses say where the numbers come from (`load`); this class splits them, standardizes
    features with statistics of the training split only, and hands out batches.
    """

    def __init__(
        self,
        batch_size: int = 32,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed

    def load(self, task: str) -> Table:
        """Features and target for a model of `task`; UserError if the data cannot serve it."""
        raise NotImplementedError

    def check(self, task: str) -> Standardized:
        """The data for a model of `task`, split and standardized in numpy: every check a run
        makes of its data, without torch (a sweep checks its data before it starts)."""
        table = self.load(task)
        _refuse_task(table.name, table.task, task)
        return standardize(table, self.val_fraction, self.test_fraction, self.seed)

    def precheck(self, task: str) -> Standardized | None:
        """What a sweep checks before it starts: check(), unless the data is known good and
        slow to load (None then)."""
        return self.check(task)

    def prepare(self, task: str, device: torch.device | str = "cpu") -> Splits:
        return self.check(task).to_splits(device)

    def train_batches(self, splits: Splits) -> Batches:
        return Batches(splits.train, self.batch_size, shuffle=True, seed=self.seed)


def _refuse_task(name: str, found: str, task: str) -> None:
    if found != task:
        model = "classifier" if task == CLASSIFICATION else "regressor"
        fitting = "classifier" if found == CLASSIFICATION else "regressor"
        raise UserError(
            f"data={name} is a {found} dataset but model={model} needs {task}: use model={fitting}"
        )


@dataclass(frozen=True)
class Standardized:
    """A table split (row indices) and standardized with its training rows' statistics."""

    table: Table
    parts: list[np.ndarray]  # train, val, test row indices
    features: np.ndarray  # (n, d) float32
    target: np.ndarray  # class ids, or the standardized regression target
    n_outputs: int
    target_scale: float

    def to_splits(self, device: torch.device | str = "cpu") -> Splits:
        """The splits as tensors on `device`."""
        import torch

        device = torch.device(device)
        dtype = torch.long if self.table.task == CLASSIFICATION else torch.float32
        x = torch.as_tensor(self.features).to(device)
        y = torch.as_tensor(self.target, dtype=dtype).to(device)

        def take(index: np.ndarray) -> Split:
            rows = torch.as_tensor(index, device=device)
            return Split(x[rows], y[rows])

        return Splits(
            train=take(self.parts[0]),
            val=take(self.parts[1]),
            test=take(self.parts[2]),
            n_features=x.shape[1],
            n_outputs=self.n_outputs,
            task=self.table.task,
            fingerprint=self.table.fingerprint(),
            target_scale=self.target_scale,
            classes=self.table.classes,
        )


def split_and_standardize(
    table: Table, val_fraction: float, test_fraction: float, seed: int, device: torch.device
) -> Splits:
    return standardize(table, val_fraction, test_fraction, seed).to_splits(device)


def standardize(
    table: Table, val_fraction: float, test_fraction: float, seed: int
) -> Standardized:
    """Seeded train/val/test rows, and features (and a regression target) standardized by the
    training rows; UserError for data a model cannot learn from."""
    n = len(table.target)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    n_train = n - n_val - n_test
    if n_train < 2 or n_val < 1 or n_test < 1:
        raise UserError(
            f"data={table.name} has {n} rows: too few for a train/val/test split with "
            f"val_fraction={val_fraction}, test_fraction={test_fraction} (need >= 2/1/1 rows)"
        )
    order = np.random.default_rng(seed).permutation(n)
    parts = np.split(order, [n_train, n_train + n_val])
    standardized = _standardized_features(table, parts[0])
    if table.task == CLASSIFICATION:
        if len(np.unique(table.target[parts[0]])) < 2:
            raise UserError(
                f"data={table.name}: the training split holds one class only, so a classifier "
                "learns nothing: use data with at least two classes in its training rows"
            )
        n_outputs = 1 if table.n_classes <= 2 else table.n_classes
        return Standardized(table, parts, standardized, table.target, n_outputs, 1.0)
    standardized_target, target_scale = _standardized_target(table, parts[0])
    return Standardized(table, parts, standardized, standardized_target, 1, target_scale)


def _standardized_features(table: Table, train: np.ndarray) -> np.ndarray:
    """Features scaled by the training rows' mean and std; UserError if they overflow."""
    features = table.features.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        mean = features[train].mean(axis=0)
        std = features[train].std(axis=0)
        std[std == 0] = 1.0  # a constant column stays constant (zero) instead of becoming NaN
        standardized = ((features - mean) / std).astype(np.float32)
    if not (
        np.isfinite(mean).all() and np.isfinite(std).all() and np.isfinite(standardized).all()
    ):
        raise UserError(
            f"data={table.name}: feature values too large to standardize (their mean or spread "
            "overflows a float): rescale the features"
        )
    return standardized


def _standardized_target(table: Table, train: np.ndarray) -> tuple[np.ndarray, float]:
    """A regression target scaled by the training rows' mean and std, and that std."""
    with np.errstate(over="ignore", invalid="ignore"):
        train_target = table.target[train].astype(np.float64)
        scale = float(train_target.std())
        standardized = (table.target - train_target.mean()) / (scale or 1.0)
    if scale == 0:
        raise UserError(
            f"data={table.name}: the target is constant in the training split, so there is "
            "nothing to learn: use a target that varies"
        )
    if not (np.isfinite(scale) and np.isfinite(standardized).all()):
        raise UserError(
            f"data={table.name}: target values too large to standardize (their spread "
            "overflows a float): rescale the target"
        )
    return standardized, scale

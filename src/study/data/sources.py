"""Where a dataset's numbers come from: the lecture problem (generated), scikit-learn's tabular
sets, and a CSV file of the user's, each checked for what a model can learn from."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from study.data.tables import TASKS, Standardized, Table, TabularData, _refuse_task
from study.errors import UserError
from study.task import CLASSIFICATION, REGRESSION


class LectureData(TabularData):
    """The classic "will I pass this class?" problem, generated deterministically from a seed.

    Features: lectures attended (0-30) and hours spent on the final project (0-40). The grade
    depends nonlinearly on both (diminishing returns, and a project with too few lectures behind
    it does not pay off); pass means grade >= 50. `noise` blurs the grade, so a model that fits
    every training student is overfitting.
    """

    def __init__(self, n_samples: int = 400, noise: float = 8.0, **split: object) -> None:
        super().__init__(**split)  # type: ignore[arg-type]
        self.n_samples = n_samples
        self.noise = noise

    def load(self, task: str) -> Table:
        rng = np.random.default_rng(self.seed)
        lectures = rng.uniform(0, 30, self.n_samples)
        hours = rng.uniform(0, 40, self.n_samples)
        skill = 70 * (1 - np.exp(-lectures / 10)) + 40 * (1 - np.exp(-hours / 12))
        synergy = -25 * np.exp(-((lectures - 5) ** 2) / 30) * (hours / 40)
        grade = np.clip(skill + synergy - 25 + rng.normal(0, self.noise, self.n_samples), 0, 100)
        features = np.column_stack([lectures, hours])
        if task == CLASSIFICATION:
            return Table(features, (grade >= 50).astype(np.int64), CLASSIFICATION, "lecture")
        return Table(features, grade, REGRESSION, "lecture")


_SKLEARN_SETS = {
    "breast_cancer": CLASSIFICATION,
    "wine": CLASSIFICATION,
    "digits": CLASSIFICATION,
    "diabetes": REGRESSION,
}


class SklearnData(TabularData):
    """A tabular dataset that scikit-learn ships on disk: breast_cancer, wine, digits, diabetes."""

    def __init__(self, name: str, **split: object) -> None:
        super().__init__(**split)  # type: ignore[arg-type]
        if name not in _SKLEARN_SETS:
            raise UserError(f"data.name={name!r} is unknown: use one of {sorted(_SKLEARN_SETS)}")
        self.name = name

    def precheck(self, task: str) -> Standardized | None:
        """Only the task: scikit-learn's bundled sets are known good, and loading one costs a
        sweep's parent ~1 s of imports before its workers start."""
        _refuse_task(self.name, _SKLEARN_SETS[self.name], task)
        return None

    def load(self, task: str) -> Table:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, f"load_{self.name}")()
        target_dtype = np.int64 if _SKLEARN_SETS[self.name] == CLASSIFICATION else np.float64
        return Table(
            np.asarray(bunch.data, dtype=np.float64),
            np.asarray(bunch.target, dtype=target_dtype),
            _SKLEARN_SETS[self.name],
            self.name,
        )


class CsvData(TabularData):
    """The user's own CSV: every column but `target` is a numeric feature.

    `task: auto` treats an integer target with at most `max_classes` distinct values, or a
    text target (yes/no), as class labels and anything else as a regression target. Text
    labels become class ids in `classes` order (sorted unless given; each run records it).
    """

    def __init__(
        self,
        path: str,
        target: str,
        task: str = "auto",
        max_classes: int = 20,
        classes: Sequence[str] | None = None,
        **split: object,
    ) -> None:
        super().__init__(**split)  # type: ignore[arg-type]
        if task not in (*TASKS, "auto"):
            raise UserError(f"data.task={task!r} is not allowed: use auto, {', '.join(TASKS)}")
        self.path = Path(path).expanduser()
        self.target = target
        self.task = task
        self.max_classes = max_classes
        self.classes = tuple(str(label) for label in classes) if classes else ()

    def load(self, task: str) -> Table:
        import pandas as pd

        if not self.path.is_file():
            raise UserError(f"data.path={self.path} does not exist: give the path of a CSV file")
        try:
            frame = pd.read_csv(self.path)
        except pd.errors.EmptyDataError as error:
            message = f"data.path={self.path} is empty: the CSV needs a header and rows"
            raise UserError(message) from error
        except (pd.errors.ParserError, UnicodeDecodeError) as error:
            reason = str(error).splitlines()[0]
            raise UserError(f"data.path={self.path} is not a readable CSV: {reason}") from error
        if frame.empty:
            raise UserError(f"data.path={self.path} has a header but no rows")
        header = pd.read_csv(self.path, header=None, nrows=1, dtype=str).iloc[0]
        self._refuse_duplicate_columns([str(name) for name in header])
        if self.target not in frame.columns:
            raise UserError(
                f"data.target={self.target!r} is not a column of {self.path.name}: "
                f"columns are {list(frame.columns)}"
            )
        labels = self._text_labels(frame[self.target])
        for column in frame.columns:
            if column == self.target and labels is not None:
                continue
            values = pd.to_numeric(frame[column], errors="coerce")
            bad = values.isna() | ~np.isfinite(values.astype(float))
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # 1-based, after the header
                given = frame[column].iloc[row - 2]
                kind = (
                    "missing"
                    if pd.isna(given)
                    else ("infinite" if np.isinf(values.iloc[row - 2]) else "non-numeric")
                )
                raise UserError(
                    f"column {column!r} of {self.path.name} has a {kind} value on line {row}: "
                    "every feature column must be a finite number with no gaps"
                )
            frame[column] = values
        if labels is not None:
            classes = self._class_order(labels)
            ids = {label: index for index, label in enumerate(classes)}
            codes = np.array([ids[label] for label in labels], dtype=np.int64)
            frame.pop(self.target)
            self._refuse_target_only(frame)
            self._refuse_one_class(classes)
            return Table(frame.to_numpy(np.float64), codes, CLASSIFICATION, "csv", classes)
        target = frame.pop(self.target).to_numpy(dtype=np.float64)
        self._refuse_target_only(frame)
        inferred = self._infer_task(target)
        if inferred == CLASSIFICATION:
            values, codes = np.unique(target, return_inverse=True)
            self._refuse_one_class(values)
            return Table(frame.to_numpy(np.float64), codes.astype(np.int64), inferred, "csv")
        return Table(frame.to_numpy(np.float64), target, inferred, "csv")

    def _text_labels(self, column: object) -> list[str] | None:
        """The target's values as text labels if any is not a number (yes/no), else None."""
        import pandas as pd

        assert isinstance(column, pd.Series)
        if column.isna().any() or pd.to_numeric(column, errors="coerce").notna().all():
            return None  # numbers (or a gap, reported as such)
        if self.task == REGRESSION:
            example = next(v for v in column if pd.isna(pd.to_numeric(v, errors="coerce")))
            raise UserError(
                f"data.task=regression but data.target={self.target!r} holds text "
                f"({str(example)!r}): a regression target must be numeric"
            )
        return [str(value).strip() for value in column]

    def _class_order(self, labels: list[str]) -> tuple[str, ...]:
        """The class ids of text labels: `classes` if given (a run's record), else sorted."""
        found = sorted(set(labels))
        if not self.classes:
            if len(found) > self.max_classes:
                raise UserError(
                    f"data.target={self.target!r} holds {len(found)} different text labels, "
                    f"more than data.max_classes={self.max_classes}: raise data.max_classes "
                    "if each is a class, or choose another target column"
                )
            return tuple(found)
        unknown = [label for label in found if label not in self.classes]
        if unknown:
            raise UserError(
                f"data.target={self.target!r} holds {unknown[0]!r}, which is not in "
                f"data.classes={list(self.classes)}: add it, or set data.classes=null"
            )
        return self.classes

    def _refuse_target_only(self, frame: object) -> None:
        if getattr(frame, "shape", (0, 0))[1] == 0:
            raise UserError(f"{self.path.name} has only the target column: add feature columns")

    def _refuse_one_class(self, classes: Sequence[object] | np.ndarray) -> None:
        if len(classes) < 2:
            raise UserError(
                f"data.target={self.target!r} has one class only: a classifier needs two"
            )

    def _refuse_duplicate_columns(self, names: list[str]) -> None:
        """UserError naming the repeated column names: pandas would rename them (`hours.1`)."""
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            counted = ", ".join(f"{name!r} ({names.count(name)} times)" for name in repeated)
            raise UserError(
                f"data.path={self.path} has duplicate column names: {counted}: "
                "give every column its own name"
            )

    def _infer_task(self, target: np.ndarray) -> str:
        if self.task != "auto":
            if self.task == CLASSIFICATION and not np.all(target == np.round(target)):
                raise UserError(
                    f"data.task=classification but data.target={self.target!r} is not "
                    "integer class labels: use data.task=regression"
                )
            return self.task
        integral = np.all(target == np.round(target))
        return (
            CLASSIFICATION
            if integral and len(np.unique(target)) <= self.max_classes
            else (REGRESSION)
        )

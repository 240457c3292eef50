"""Datasets, seeded splits, training-split standardization, CSV checks and batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from study.data import (
    CLASSIFICATION,
    REGRESSION,
    Batches,
    CsvData,
    LectureData,
    SklearnData,
    Split,
    Table,
    split_and_standardize,
)
from study.errors import UserError

CPU = torch.device("cpu")

ROOT = Path(__file__).resolve().parents[1]


def _rows(split: Split) -> set[tuple[float, ...]]:
    return {tuple(row) for row in split.x.tolist()}


def _indexed_table(n: int = 100, n_features: int = 3, seed: int = 7) -> Table:
    """Random features whose target is the row number, so a split tells which rows it holds."""
    features = np.random.default_rng(seed).normal(5.0, 3.0, size=(n, n_features))
    return Table(features, np.arange(n, dtype=np.int64), CLASSIFICATION, "indexed")


# --- lecture -------------------------------------------------------------------------------


@pytest.mark.parametrize("task", [CLASSIFICATION, REGRESSION])
def test_lecture_data_is_identical_for_the_same_seed(task: str) -> None:
    first = LectureData(n_samples=150, seed=3).load(task)
    second = LectureData(n_samples=150, seed=3).load(task)
    np.testing.assert_array_equal(first.features, second.features)
    np.testing.assert_array_equal(first.target, second.target)


def test_lecture_data_differs_across_seeds() -> None:
    first = LectureData(n_samples=150, seed=3).load(REGRESSION)
    second = LectureData(n_samples=150, seed=4).load(REGRESSION)
    assert not np.allclose(first.features, second.features)
    assert not np.allclose(first.target, second.target)


def test_lecture_pass_label_means_grade_at_least_50() -> None:
    passed = LectureData(n_samples=300, seed=1).load(CLASSIFICATION)
    graded = LectureData(n_samples=300, seed=1).load(REGRESSION)
    np.testing.assert_array_equal(passed.features, graded.features)
    np.testing.assert_array_equal(passed.target, (graded.target >= 50).astype(np.int64))
    assert set(passed.target.tolist()) == {0, 1}  # both outcomes occur: a real problem


def test_lecture_features_and_grade_stay_in_their_documented_ranges() -> None:
    table = LectureData(n_samples=500, seed=0).load(REGRESSION)
    lectures, hours = table.features[:, 0], table.features[:, 1]
    assert lectures.min() >= 0 and lectures.max() <= 30
    assert hours.min() >= 0 and hours.max() <= 40
    assert table.target.min() >= 0 and table.target.max() <= 100


@pytest.mark.parametrize("n_samples", [10, 137])
def test_lecture_n_samples_sets_the_number_of_rows(n_samples: int) -> None:
    table = LectureData(n_samples=n_samples).load(CLASSIFICATION)
    assert table.features.shape == (n_samples, 2)
    assert table.target.shape == (n_samples,)


def test_lecture_noise_zero_makes_the_grade_a_function_of_the_features() -> None:
    clean = LectureData(n_samples=200, noise=0.0, seed=0).load(REGRESSION)
    noisy = LectureData(n_samples=200, noise=8.0, seed=0).load(REGRESSION)
    np.testing.assert_array_equal(clean.features, noisy.features)
    assert np.abs(clean.target - noisy.target).mean() > 1.0


def test_fingerprint_tells_same_data_from_different_data() -> None:
    same = [LectureData(n_samples=50, seed=0).load(REGRESSION).fingerprint() for _ in range(2)]
    other_seed = LectureData(n_samples=50, seed=1).load(REGRESSION).fingerprint()
    other_task = LectureData(n_samples=50, seed=0).load(CLASSIFICATION).fingerprint()
    assert same[0] == same[1]
    assert len({same[0], other_seed, other_task}) == 3


# --- splits and standardization ------------------------------------------------------------


def test_split_sizes_follow_the_fractions() -> None:
    splits = LectureData(n_samples=200, val_fraction=0.2, test_fraction=0.1).prepare(
        CLASSIFICATION
    )
    assert (len(splits.train), len(splits.val), len(splits.test)) == (140, 40, 20)


def test_splits_are_disjoint_and_cover_every_row() -> None:
    splits = split_and_standardize(_indexed_table(n=100), 0.2, 0.2, seed=0, device=CPU)
    train, val, test = (set(s.y.tolist()) for s in (splits.train, splits.val, splits.test))
    assert not train & val and not train & test and not val & test
    assert train | val | test == set(range(100))


def test_split_rows_keep_features_and_target_together() -> None:
    table = _indexed_table(n=60)
    splits = split_and_standardize(table, 0.2, 0.2, seed=0, device=CPU)
    # Row i's standardized features must come from row i: same order within every column.
    x = torch.cat([splits.train.x, splits.val.x, splits.test.x]).numpy()
    rows = torch.cat([splits.train.y, splits.val.y, splits.test.y]).numpy()
    for column in range(table.features.shape[1]):
        np.testing.assert_array_equal(
            np.argsort(x[:, column]), np.argsort(table.features[rows, column])
        )


def test_split_depends_on_the_seed() -> None:
    table = _indexed_table(n=100)
    first = split_and_standardize(table, 0.2, 0.2, seed=0, device=CPU)
    again = split_and_standardize(table, 0.2, 0.2, seed=0, device=CPU)
    other = split_and_standardize(table, 0.2, 0.2, seed=1, device=CPU)
    assert first.train.y.tolist() == again.train.y.tolist()
    assert set(first.train.y.tolist()) != set(other.train.y.tolist())


def test_standardization_uses_training_split_statistics_only() -> None:
    table = _indexed_table(n=120)
    splits = split_and_standardize(table, 0.25, 0.25, seed=0, device=CPU)
    train_rows = splits.train.y.numpy()
    mean = table.features[train_rows].mean(axis=0)
    std = table.features[train_rows].std(axis=0)
    for split in (splits.train, splits.val, splits.test):
        expected = (table.features[split.y.numpy()] - mean) / std
        np.testing.assert_allclose(split.x.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_standardized_train_features_have_mean_0_std_1_and_held_out_ones_do_not() -> None:
    splits = LectureData(n_samples=300, seed=0).prepare(CLASSIFICATION)
    train = splits.train.x
    torch.testing.assert_close(train.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(train.std(0, unbiased=False), torch.ones(2), atol=1e-5, rtol=0)
    for held_out in (splits.val.x, splits.test.x):
        assert held_out.mean(0).abs().max() > 1e-3  # not standardized with their own stats


def test_a_constant_feature_becomes_zero_instead_of_nan() -> None:
    features = np.column_stack([np.arange(40.0), np.full(40, 3.0)])
    table = Table(features, np.arange(40) % 2, CLASSIFICATION, "constant")
    splits = split_and_standardize(table, 0.25, 0.25, seed=0, device=CPU)
    assert torch.isfinite(splits.train.x).all()
    assert (splits.train.x[:, 1] == 0).all()


def test_regression_target_is_standardized_and_target_scale_maps_it_back() -> None:
    data = LectureData(n_samples=300, seed=0)
    grades = data.load(REGRESSION).target
    splits = data.prepare(REGRESSION)
    train = splits.train.y
    assert abs(train.mean().item()) < 1e-5
    assert abs(train.std(unbiased=False).item() - 1) < 1e-5
    assert splits.target_scale > 5  # grades spread over tens of points
    # y * target_scale + (training mean) must give back every grade: a constant offset.
    all_y = torch.cat([splits.train.y, splits.val.y, splits.test.y]).double().numpy()
    offset = np.sort(grades) - np.sort(all_y * splits.target_scale)
    assert np.ptp(offset) < 1e-3


def test_classification_target_scale_is_one() -> None:
    assert LectureData(n_samples=100).prepare(CLASSIFICATION).target_scale == 1.0


def test_too_few_rows_for_a_split_is_a_user_error() -> None:
    with pytest.raises(UserError, match="too few"):
        LectureData(n_samples=3).prepare(CLASSIFICATION)


def _table(features: np.ndarray, target: np.ndarray, task: str) -> Table:
    return Table(features, target, task, "t")


def _one_class_in_training(n: int = 20) -> Table:
    """Two classes, but the only row of class 1 falls outside the training split (seed 0)."""
    held_out = np.random.default_rng(0).permutation(n)[-1]
    target = np.zeros(n, dtype=np.int64)
    target[held_out] = 1
    return _table(np.arange(n * 2, dtype=np.float64).reshape(n, 2), target, CLASSIFICATION)


RANGE = np.arange(40, dtype=np.float64)
UNTRAINABLE = {
    "one class in training": (_one_class_in_training(), "one class only"),
    "constant target": (
        _table(RANGE.reshape(20, 2), np.full(20, 2.5), REGRESSION),
        "target is constant",
    ),
    "huge features": (
        _table(np.tile([1e308, -1e308], (20, 1)), np.arange(20) % 2, CLASSIFICATION),
        "feature values too large",
    ),
    "huge targets": (
        _table(RANGE.reshape(20, 2), (-1.0) ** np.arange(20) * 1e200, REGRESSION),
        "target values too large",
    ),
}


@pytest.mark.parametrize("case", UNTRAINABLE, ids=list(UNTRAINABLE))
def test_data_that_cannot_train_is_a_user_error_with_the_reason(case: str) -> None:
    table, reason = UNTRAINABLE[case]
    with pytest.raises(UserError, match=reason):
        split_and_standardize(table, 0.2, 0.2, seed=0, device=CPU)


# --- scikit-learn sets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "task", "n_rows", "n_features", "n_outputs"),
    [
        ("breast_cancer", CLASSIFICATION, 569, 30, 1),
        ("wine", CLASSIFICATION, 178, 13, 3),
        ("digits", CLASSIFICATION, 1797, 64, 10),
        ("diabetes", REGRESSION, 442, 10, 1),
    ],
)
def test_sklearn_set_loads_with_its_task_and_sizes(
    name: str, task: str, n_rows: int, n_features: int, n_outputs: int
) -> None:
    splits = SklearnData(name).prepare(task)
    assert splits.task == task
    assert splits.n_features == n_features
    assert splits.n_outputs == n_outputs
    assert len(splits.train) + len(splits.val) + len(splits.test) == n_rows


@pytest.mark.parametrize(
    ("name", "task", "model"),
    [("wine", REGRESSION, "regressor"), ("diabetes", CLASSIFICATION, "classifier")],
)
def test_model_data_task_mismatch_is_a_user_error_naming_both(
    name: str, task: str, model: str
) -> None:
    with pytest.raises(UserError) as caught:
        SklearnData(name).prepare(task)
    message = str(caught.value)
    assert f"data={name}" in message
    assert f"model={model}" in message


def test_unknown_sklearn_set_is_a_user_error() -> None:
    with pytest.raises(UserError, match="iris"):
        SklearnData("iris")


# --- CSV -----------------------------------------------------------------------------------


def _csv(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_with_integer_target_is_inferred_as_classification(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},{i % 5},{(i % 3) * 10}" for i in range(30))  # labels 0, 10, 20
    path = _csv(tmp_path, f"a,b,y\n{rows}\n")
    splits = CsvData(str(path), "y").prepare(CLASSIFICATION)
    assert splits.task == CLASSIFICATION
    assert splits.n_features == 2
    assert splits.n_outputs == 3
    labels_seen = torch.cat([splits.train.y, splits.val.y, splits.test.y]).unique().tolist()
    assert labels_seen == [0, 1, 2]  # class ids, whatever the CSV calls them


def test_csv_with_float_target_is_inferred_as_regression(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},{i % 5},{i * 0.37 + 1.5}" for i in range(30))
    path = _csv(tmp_path, f"a,b,y\n{rows}\n")
    splits = CsvData(str(path), "y").prepare(REGRESSION)
    assert splits.task == REGRESSION
    assert splits.n_features == 2
    assert splits.n_outputs == 1


@pytest.mark.parametrize(("distinct", "task"), [(20, CLASSIFICATION), (21, REGRESSION)])
def test_an_integer_target_is_classes_up_to_20_distinct_values(
    tmp_path: Path, distinct: int, task: str
) -> None:
    rows = "\n".join(f"{i},{i % 7},{i % distinct}" for i in range(4 * distinct))
    path = _csv(tmp_path, f"a,b,y\n{rows}\n")
    assert CsvData(str(path), "y").prepare(task).task == task
    other = REGRESSION if task == CLASSIFICATION else CLASSIFICATION
    with pytest.raises(UserError, match=f"is a {task} dataset"):
        CsvData(str(path), "y").prepare(other)


def test_csv_task_can_be_set_instead_of_inferred(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},{i % 5},{i % 4}" for i in range(30))
    path = _csv(tmp_path, f"a,b,y\n{rows}\n")
    assert CsvData(str(path), "y", task=REGRESSION).prepare(REGRESSION).task == REGRESSION


def test_csv_classification_data_with_a_regressor_is_a_mismatch(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},{i % 5},{i % 2}" for i in range(30))
    path = _csv(tmp_path, f"a,b,y\n{rows}\n")
    with pytest.raises(UserError, match="model=regressor"):
        CsvData(str(path), "y").prepare(REGRESSION)


@pytest.mark.parametrize(
    ("text", "target", "expected"),
    [
        pytest.param(None, "y", ["data.path=", "does not exist"], id="missing-file"),
        pytest.param("", "y", ["data.path=", "empty"], id="empty-file"),
        pytest.param("a,b,y\n", "y", ["data.path=", "no rows"], id="header-only"),
        pytest.param("a,b,c\n1,2,0\n3,4,1\n", "y", ["data.target='y'", "'c'"], id="no-target"),
        pytest.param("a,b,y\n1,2,0\n3,x,1\n", "y", ["'b'", "non-numeric", "line 3"], id="text"),
        pytest.param("a,b,y\n1,2,0\n3,4,1\n5,,0\n", "y", ["'b'", "missing", "line 4"], id="gap"),
        pytest.param("y\n1\n0\n", "y", ["only the target"], id="target-only"),
        pytest.param(
            "hours,lectures,hours,y\n1,2,3,0\n3,4,5,1\n",
            "y",
            ["duplicate column names", "'hours' (2 times)"],
            id="duplicate-feature",
        ),
        pytest.param(
            "a,y,y,b,b,b\n1,0,1,2,3,4\n3,1,0,4,5,6\n",
            "y",
            ["'b' (3 times), 'y' (2 times)"],
            id="duplicate-target-and-feature",
        ),
    ],
)
def test_bad_csv_is_a_user_error_naming_what_is_wrong(
    tmp_path: Path, text: str | None, target: str, expected: list[str]
) -> None:
    path = tmp_path / "grades.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError) as caught:
        CsvData(str(path), target).prepare(CLASSIFICATION)
    message = str(caught.value)
    for fragment in expected:
        assert fragment in message, message


def test_csv_unknown_task_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"data\.task"):
        CsvData(str(tmp_path / "x.csv"), "y", task="ranking")


# --- batches -------------------------------------------------------------------------------


def _numbered_split(n: int) -> Split:
    return Split(torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.arange(n))


def _epoch(batches: Batches) -> list[int]:
    return [int(i) for _, y in batches for i in y]


def test_batches_cover_every_row_exactly_once_per_epoch() -> None:
    batches = Batches(_numbered_split(30), batch_size=7, shuffle=True, seed=0)
    assert len(batches) == 5
    for _ in range(3):
        assert [len(y) for _, y in batches] == [7, 7, 7, 7, 2]
        assert sorted(_epoch(batches)) == list(range(30))


def test_batches_keep_features_and_targets_aligned() -> None:
    for x, y in Batches(_numbered_split(30), batch_size=8, shuffle=True, seed=0):
        assert x.squeeze(1).long().tolist() == y.tolist()


def test_seeded_shuffle_is_reproducible() -> None:
    first = Batches(_numbered_split(50), batch_size=8, shuffle=True, seed=5)
    second = Batches(_numbered_split(50), batch_size=8, shuffle=True, seed=5)
    assert [_epoch(first) for _ in range(3)] == [_epoch(second) for _ in range(3)]


def test_shuffled_order_changes_between_epochs_and_seeds() -> None:
    batches = Batches(_numbered_split(50), batch_size=8, shuffle=True, seed=5)
    other_seed = Batches(_numbered_split(50), batch_size=8, shuffle=True, seed=6)
    first_epoch = _epoch(batches)
    assert _epoch(batches) != first_epoch
    assert _epoch(other_seed) != first_epoch
    assert first_epoch != list(range(50))


def test_unshuffled_batches_keep_row_order() -> None:
    batches = Batches(_numbered_split(10), batch_size=4, shuffle=False)
    assert [y.tolist() for _, y in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_the_example_csv_is_the_lecture_data_written_out() -> None:
    """docs/grades.csv, the README's CSV example: 200 students of seed 0, pass/fail."""
    shipped = CsvData(str(ROOT / "docs" / "grades.csv"), "passed").load(CLASSIFICATION)
    lecture = LectureData(n_samples=200, seed=0).load(CLASSIFICATION)
    assert np.array_equal(shipped.target, lecture.target)
    assert np.allclose(shipped.features, lecture.features, atol=0.5)  # lectures: whole numbers


# --- text class labels ---------------------------------------------------------------------


def _labelled(tmp_path: Path, labels: list[str]) -> Path:
    rows = "".join(f"{i},{i % 7},{labels[i % len(labels)]}\n" for i in range(40))
    return _csv(tmp_path, f"a,b,y\n{rows}", "labelled.csv")


def test_text_labels_are_classes_numbered_in_sorted_order(tmp_path: Path) -> None:
    table = CsvData(str(_labelled(tmp_path, ["yes", "no", "maybe"])), "y").load(CLASSIFICATION)
    assert table.task == CLASSIFICATION
    assert table.classes == ("maybe", "no", "yes")
    assert table.target[:3].tolist() == [2, 1, 0]  # yes, no, maybe


def test_text_labels_follow_a_recorded_class_order(tmp_path: Path) -> None:
    path = str(_labelled(tmp_path, ["pass", "fail"]))
    table = CsvData(path, "y", classes=["pass", "fail"]).load(CLASSIFICATION)
    assert table.classes == ("pass", "fail")
    assert table.target[:2].tolist() == [0, 1]
    with pytest.raises(UserError, match=r"'pass', which is not in data\.classes"):
        CsvData(path, "y", classes=["fail", "ok"]).load(CLASSIFICATION)


def test_text_labels_change_the_fingerprint(tmp_path: Path) -> None:
    yes_no = CsvData(str(_labelled(tmp_path, ["yes", "no"])), "y").load(CLASSIFICATION)
    no_yes = CsvData(str(_labelled(tmp_path, ["no", "yes"])), "y").load(CLASSIFICATION)
    np.testing.assert_array_equal(yes_no.target, 1 - no_yes.target)
    swapped = CsvData(str(_labelled(tmp_path, ["b", "a"])), "y").load(CLASSIFICATION)
    assert yes_no.fingerprint() != swapped.fingerprint()


def test_text_labels_are_refused_as_a_regression_target(tmp_path: Path) -> None:
    path = str(_labelled(tmp_path, ["yes", "no"]))
    with pytest.raises(UserError, match=r"data\.task=regression.*holds text"):
        CsvData(path, "y", task=REGRESSION).load(REGRESSION)


def test_too_many_text_labels_are_refused(tmp_path: Path) -> None:
    path = str(_labelled(tmp_path, [f"name{i}" for i in range(40)]))
    with pytest.raises(UserError, match=r"40 different text labels.*data\.max_classes=20"):
        CsvData(path, "y").load(CLASSIFICATION)


def test_checking_data_imports_no_torch(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = _labelled(tmp_path, ["yes", "no"])
    code = (
        "import sys; from study.data import CsvData; "
        f"CsvData({str(path)!r}, 'y').check('classification'); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

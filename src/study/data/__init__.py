"""A run's data: datasets (the configs build them as `study.data.NAME`) -> seeded splits,
standardized by the training rows, as tensors on the training device.

- `sources`: where the numbers come from (the lecture problem, scikit-learn's sets, a CSV);
- `tables`: a table, its split and standardization, the splits as tensors, batching;
- `prepare`: a run's data from its config, checked once (the same check for a run and a sweep).

Free of Lightning, like the packed engine; torch is imported only where tensors are made, so a
sweep's parent checks its data without it.
"""

from study.data.prepare import (
    PreparedData,
    check_data,
    device_name,
    instantiate_data,
    precheck_data,
    prepare_data,
    record_classes,
    resolve_device,
)
from study.data.sources import CsvData, LectureData, SklearnData
from study.data.tables import (
    TASKS,
    Batches,
    Split,
    Splits,
    Standardized,
    Table,
    TabularData,
    split_and_standardize,
    standardize,
)
from study.task import CLASSIFICATION, REGRESSION

__all__ = [
    "CLASSIFICATION",
    "REGRESSION",
    "TASKS",
    "Batches",
    "CsvData",
    "LectureData",
    "PreparedData",
    "SklearnData",
    "Split",
    "Splits",
    "Standardized",
    "Table",
    "TabularData",
    "check_data",
    "device_name",
    "instantiate_data",
    "precheck_data",
    "prepare_data",
    "record_classes",
    "resolve_device",
    "split_and_standardize",
    "standardize",
]

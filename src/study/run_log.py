"""A run's metrics to MLflow in batches. Free of Lightning: a packed worker logs its members'
runs without importing it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from types import TracebackType

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from study.tracking import clean_number, final_metrics, redacted_tags

_MAX_BATCH = 1000  # metrics and tags together in one MLflow log_batch


class RunLog(contextlib.AbstractContextManager["RunLog"]):
    """Sends a run's epochs' metrics (step = epoch) to MLflow in batches.

    One `log_batch` per `flush_every_s` seconds instead of one write per metric per epoch:
    a synchronous sqlite write costs ~10 ms, far more than an epoch of a small MLP. What is
    still buffered when training ends goes out with the run's final metrics and tags in one
    write (`finish`), or, if the run fails first, when the logger's `with` block ends.
    """

    def __init__(self, client: MlflowClient, run_id: str, flush_every_s: float = 5.0) -> None:
        self.client = client
        self.run_id = run_id
        self.flush_every_s = flush_every_s
        self._pending: list[Metric] = []
        self._sent_epochs = 0
        self._last_flush = time.monotonic()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.flush()
            return
        with contextlib.suppress(Exception):  # never hide the error that stopped the run
            self.flush()

    def buffer(self, history: Sequence[Mapping[str, float]]) -> None:
        """Queue the epochs of `history` not queued yet (step = epoch)."""
        now_ms = int(time.time() * 1000)
        for row in history[self._sent_epochs :]:
            epoch = int(row["epoch"])
            self._pending += [
                Metric(name, clean_number(value), now_ms, epoch)
                for name, value in row.items()
                if name != "epoch"
            ]
        self._sent_epochs = max(self._sent_epochs, len(history))

    def epoch_ended(self, history: Sequence[Mapping[str, float]]) -> None:
        """Queue the new epochs of `history`; send what is queued every `flush_every_s`."""
        self.buffer(history)
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def finish(
        self,
        values: Mapping[str, float],
        tags: Mapping[str, str],
        history: Sequence[Mapping[str, float]] = (),
        series: Sequence[Metric] = (),
    ) -> None:
        """The curve's epochs not sent yet, the run's final metrics (step 0), further `series`
        (its markers) and its tags: one write."""
        self.buffer(history)
        self._pending += [*final_metrics(values), *series]
        self.flush(redacted_tags(tags))

    def flush(self, tags: list[RunTag] | None = None) -> None:
        metrics, self._pending = self._pending, []
        tags = tags or []  # a handful: MLflow takes up to 100 per batch
        head = _MAX_BATCH - len(tags)
        if metrics or tags:
            self.client.log_batch(self.run_id, metrics=metrics[:head], tags=tags)
        for start in range(head, len(metrics), _MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + _MAX_BATCH])
        self._last_flush = time.monotonic()

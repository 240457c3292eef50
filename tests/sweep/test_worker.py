"""study.sweep.worker: a worker whose parent is gone exits quietly."""

from __future__ import annotations

import os

import pytest

from study.sweep.spec import Ready
from study.sweep.worker import TrialRunner


def test_a_worker_whose_parent_is_gone_exits_with_one_line_not_a_traceback() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # the parent died: nobody reads the events any more
    runner = TrialRunner.__new__(TrialRunner)  # emit needs no spec, store or study
    runner.index, runner.events_fd = 3, write_fd
    try:
        with pytest.raises(SystemExit) as caught:  # Python exits on it without a traceback
            runner.emit(Ready())
    finally:
        os.close(write_fd)
    assert str(caught.value) == "worker 3: the sweep's parent is gone: exiting"
    assert not isinstance(caught.value, Exception)  # a trial's `except Exception` lets it pass

"""A stopwatch on a packed sweep worker's per-trial calls, for `python tools/bench.py packed`.

Python imports this at start-up when tools/stopwatch is on PYTHONPATH; it does nothing unless
$STUDY_STOPWATCH names a folder (the benchmark sets both for one study only). It times the calls
a packed worker (study.sweep.packs.PackRunner, its trials' TrialReport) makes per trial on its
training path: taking one (wait for the go, claim, sample), its per-epoch report and pruning
check, and freeing its slot; and, apart, what its writer thread spends off that path opening
and closing the trial's run (config files, MLflow run and params; checkpoint, artifacts, the
final write, tell). It writes their totals to <folder>/<pid>.json when the process exits.
"""

from __future__ import annotations

import atexit
import collections
import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FOLDER = os.environ.get("STUDY_STOPWATCH")
# (part, class, method) timed: a packed member's epochs are heard by its TrialReport.
CALLS = [
    ("open", "PackRunner", "next_member"),
    ("epoch", "TrialReport", "__call__"),
    ("close", "PackRunner", "on_member_done"),
    ("writes", "PackRunner", "_open_run"),  # on the writer thread
    ("writes", "PackRunner", "_close"),
]


def stopwatch(totals: dict[str, float], name: str, method: Callable[..., Any]) -> Callable:
    @functools.wraps(method)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start, cpu = time.perf_counter(), time.thread_time()
        result = method(*args, **kwargs)
        if not (name == "open" and result is None):  # the last call waits for the study's end
            totals[name] += time.perf_counter() - start
            totals[f"{name} cpu"] += time.thread_time() - cpu
        totals["trials"] += name == "close"
        return result

    return timed


def write(folder: str, totals: dict[str, float]) -> None:
    if totals["close"]:  # a worker that ran trials
        Path(folder, f"{os.getpid()}.json").write_text(json.dumps(totals))


if FOLDER:
    from study.sweep import packs, trials

    classes = {"PackRunner": packs.PackRunner, "TrialReport": trials.TrialReport}
    totals: collections.defaultdict[str, float] = collections.defaultdict(float)
    for name, owner, attribute in CALLS:
        cls = classes[owner]
        setattr(cls, attribute, stopwatch(totals, name, getattr(cls, attribute)))
    atexit.register(write, FOLDER, totals)

"""A probe on the processes a test starts: which heavy libraries each one imported.

Python imports this at start-up when tests/probes is on PYTHONPATH; it does nothing unless
$STUDY_IMPORT_PROBE names a folder. Then each process writes, as it exits, its command line and
which of WATCHED it imported to <folder>/<pid>.json.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path

FOLDER = os.environ.get("STUDY_IMPORT_PROBE")
# $STUDY_IMPORT_WATCH (comma-separated) names others, e.g. torch,mlflow.
WATCHED = tuple(filter(None, os.environ.get("STUDY_IMPORT_WATCH", "").split(","))) or (
    "pytorch_lightning",
    "lightning_fabric",
    "torchmetrics",
)


def write(folder: str) -> None:
    imported = [name for name in WATCHED if name in sys.modules]
    record = {"argv": sys.orig_argv, "imported": imported}  # python -m study.sweep.worker ...
    Path(folder, f"{os.getpid()}.json").write_text(json.dumps(record))


if FOLDER:
    atexit.register(write, FOLDER)

"""Hydra callback that keeps the passwords of tracking.uri and sweep.storage out of Hydra's output.

Hydra saves the composed config and the command line of every job (`.hydra/config.yaml`,
`hydra.yaml`, `overrides.yaml`, and `multirun.yaml` of a grid sweep), logs each job's overrides
when it launches them, and quotes them when a job fails. The job needs the real URLs, so they
cannot be masked before it starts; the files are masked as soon as Hydra has written them,
before the job runs, log records as they are made, and the quoted overrides before Hydra
prints them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from study.paths import mask_log_records, redact

SAVED = ("config.yaml", "hydra.yaml", "overrides.yaml")


def mask_file(path: Path) -> None:
    """Rewrite `path` with every URL password masked (untouched if it holds none)."""
    if not path.is_file():
        return
    text = path.read_text()
    masked = redact(text)
    if masked != text:
        path.write_text(masked)


class MaskCredentials(Callback):
    def __init__(self) -> None:
        mask_log_records()  # before Hydra logs the overrides of the jobs it launches

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra = config.hydra
        if hydra.output_subdir is not None:
            saved = Path(hydra.runtime.output_dir) / str(hydra.output_subdir)
            for name in SAVED:
                mask_file(saved / name)
        if hydra.mode == RunMode.MULTIRUN:  # the grid sweeper saved it before the first job
            mask_file(Path(hydra.sweep.dir) / "multirun.yaml")

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        # Hydra prints these ("Error executing job with overrides: [...]") if the job failed.
        if job_return.overrides is not None:
            job_return.overrides = [redact(str(item)) for item in job_return.overrides]

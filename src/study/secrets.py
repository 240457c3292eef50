"""Secrets in what we print or store: URL passwords masked in text, log records and the files
Hydra saves.

Hydra saves the composed config and the command line of every job (`.hydra/config.yaml`,
`hydra.yaml`, `overrides.yaml`, and `multirun.yaml` of a grid sweep), logs each job's overrides
when it launches them, and quotes them when a job fails. The job needs the real URLs, so they
cannot be masked before it starts; the files are masked as soon as Hydra has written them,
before the job runs, log records as they are made, and the quoted overrides before Hydra
prints them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

# user:password@ after the scheme, also as Hydra escapes it in overrides (`postgresql\://u\:pw@`)
_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-zA-Z][\w+.-]*\\?://)(?P<user>[^:/@\s\\]*)(?P<colon>\\?:)(?P<secret>[^@/\s]+)@"
)
_PASSWORD_PARAMETER = re.compile(r"(?P<key>[?&]password=)[^&\s'\"]+", re.IGNORECASE)


def redact(text: str) -> str:
    """Mask the password of every URL in `text` (`postgresql://u:secret@h` -> `...u:***@h`)."""
    text = _CREDENTIALS.sub(r"\g<scheme>\g<user>\g<colon>***@", text)
    return _PASSWORD_PARAMETER.sub(r"\g<key>***", text)


def mask_log_records() -> None:
    """Mask passwords in every log record from now on, whatever handlers log it.

    A record factory rather than a handler filter: Hydra replaces the handlers for each job.
    """
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "masks_credentials", False):
        return

    def masked_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed format: the handler reports it as usual
            return record
        if redact(message) != message:
            record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:  # formatters reuse exc_text when it is set
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    masked_record.masks_credentials = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(masked_record)


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

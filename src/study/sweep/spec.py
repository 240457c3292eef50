"""The contract between a sweep's parent and its workers: the settings both go by, the spec a
worker starts from, the commands the parent sends on a worker's stdin, and the events workers
report back, one JSON line each.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from optuna.distributions import distribution_to_json, json_to_distribution

from study.sweep.space import Param

WORKER_MODULE = "study.sweep.worker"  # python -m WORKER_MODULE SPEC INDEX EVENTS_FD


@dataclass(frozen=True)
class StudySettings:
    """What a study's parent (its plan) and its workers (their spec) both go by."""

    study_name: str
    storage_url: str  # the real URL, password included: the spec file is its owner's only
    sampler: str
    pruner: str
    seed: int  # worker i samples with seed + i
    direction: str
    metric: str
    max_epochs: int
    n_trials: int
    retries: int
    heartbeat_s: int
    pack: int  # trials a worker trains at once
    # Its trials train in the packed engine (sweep.pack asked for more than one), in packs
    # capped to the trials left, even to one: a study's trials all train in one engine.
    packed: bool
    params: list[Param]
    overrides: list[str]  # the command line's overrides: composed again when a group is sampled
    config_name: str
    conf_dir: str

    def to_plain(self) -> dict[str, Any]:
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "params"}
        plain["params"] = [
            {
                "path": p.path,
                "is_group": p.is_group,
                "distribution": distribution_to_json(p.distribution),
            }
            for p in self.params
        ]
        return plain

    @classmethod
    def from_plain(cls, plain: dict[str, Any]) -> StudySettings:
        params = [
            Param(p["path"], json_to_distribution(p["distribution"]), p["is_group"])
            for p in plain["params"]
        ]
        return cls(**{**plain, "params": params})


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to load the study and run its trials."""

    settings: StudySettings
    in_flight: int  # trials that train at once on this host: workers x pack
    base_config: dict[str, Any]  # a trial's run config before its sampled values are set
    sweep_dir: str
    experiment_id: str
    parent_run_id: str
    tracking_uri: str | None
    deadline: float | None = None  # time.monotonic() after which no trial starts (budget.py)

    def to_json(self) -> str:
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "settings"}
        return json.dumps({**plain, "settings": self.settings.to_plain()})

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        plain = json.loads(text)
        return cls(**{**plain, "settings": StudySettings.from_plain(plain["settings"])})

    def write(self, path: Path) -> Path:
        """Write the spec readable by its owner only, from the first byte on (a chmod after
        writing would leave a moment where others may read the storage's password)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(self.to_json())
        return path

    @classmethod
    def read(cls, path: Path) -> WorkerSpec:
        return cls.from_json(path.read_text())


class Command(StrEnum):
    """What the parent tells a worker on its stdin, one line each."""

    START = "start"  # the spec is written: read it and load the study
    TRIAL = "trial"  # go ahead: claim one more trial
    STOP = "stop"  # take no more trials


def send_command(stream: IO[bytes], command: Command) -> None:
    """`command` to a worker's stdin; a worker that died is noticed by its exit, not here."""
    try:
        stream.write(f"{command}\n".encode())
        stream.flush()
    except (BrokenPipeError, OSError):
        pass


def read_command(stream: IO[str]) -> Command | None:
    """The parent's next command; None at the end of the stream (the parent is gone)."""
    line = stream.readline().strip()
    return Command(line) if line else None


@dataclass(frozen=True)
class Ready:
    """The worker has imported everything and loaded the study: it can take `slots` trials."""

    slots: int = 1


@dataclass(frozen=True)
class Started:
    number: int


@dataclass(frozen=True)
class Trained:
    """A packed trial stopped training: its slot takes the next trial (the go-ahead this
    asks for) while its run is closed; Finished follows."""

    number: int


@dataclass(frozen=True)
class CurvesDue:
    """A packed trial's curves.png to draw: a study.sweep.curves_writer.CurvesJob, as a dict.
    The parent's one figure helper draws it, so no worker pays for matplotlib."""

    job: dict[str, Any]


@dataclass(frozen=True)
class Finished:
    number: int
    state: str  # COMPLETE, PRUNED or FAIL
    value: float | None = None
    run_id: str | None = None
    device: str | None = None
    epochs: int | None = None


@dataclass(frozen=True)
class Exhausted:
    """Every trial of the study is taken, or the session's time budget is spent: the worker
    takes no more, and exits once the trials it runs have finished."""


@dataclass(frozen=True)
class Lost:
    """Sent by the parent's pool itself: the worker died while running trial `number`."""

    number: int
    code: int


Event = Ready | Started | Trained | CurvesDue | Finished | Exhausted | Lost
_EVENTS: dict[str, type[Any]] = {
    kind.__name__.lower(): kind
    for kind in (Ready, Started, Trained, CurvesDue, Finished, Exhausted, Lost)
}


def encode_event(event: Event) -> str:
    return json.dumps({"event": type(event).__name__.lower(), **asdict(event)})


def decode_event(line: str) -> Event:
    plain = json.loads(line)
    return _EVENTS[plain.pop("event")](**plain)  # type: ignore[no-any-return]

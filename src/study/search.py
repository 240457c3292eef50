"""Optuna: the search space from config, samplers, pruners, storages and the study itself.

A search space is keyed by config path, each entry a distribution with its scale:

    search:
      optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
      data.batch_size: {type: categorical, choices: [16, 32, 64, 128]}
      optimizer: {type: categorical, choices: [adam, sgd]}   # a config group: picks a file

Sampled values become Hydra overrides (`optimizer.lr=0.003`, `optimizer=sgd`), so a trial is
composed exactly like a run from the command line, and its overrides rerun it.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import optuna
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.storages.journal import JournalFileBackend

from study.errors import UserError
from study.paths import PROJECT_ROOT, database_url, redact

SAMPLERS = ("tpe", "random", "gp", "cmaes")
PRUNERS = ("median", "hyperband", "none")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
PARENT_RUN_ATTR = "mlflow_parent_run_id"

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class Param:
    """One searched config path and its distribution."""

    path: str
    distribution: optuna.distributions.BaseDistribution
    is_group: bool  # `optimizer: {choices: [adam, sgd]}` selects a config file, not a value

    def suggest(self, trial: optuna.Trial) -> str:
        """Sample a value and return it as a Hydra override."""
        d = self.distribution
        value: Any
        if isinstance(d, optuna.distributions.FloatDistribution):
            value = trial.suggest_float(self.path, d.low, d.high, log=d.log)
        elif isinstance(d, optuna.distributions.IntDistribution):
            value = trial.suggest_int(self.path, d.low, d.high, log=d.log)
        else:
            assert isinstance(d, optuna.distributions.CategoricalDistribution)
            value = trial.suggest_categorical(self.path, d.choices)
        return f"{self.path}={value}"


def _choice_text(value: Any) -> Any:
    """Optuna choices are scalars: a list choice (hidden sizes) travels as its override text."""
    if isinstance(value, ListConfig | list):
        return "[" + ",".join(str(item) for item in value) + "]"
    return value


def parse_space(
    space: Mapping[str, Any], cfg: DictConfig, group_choices: Mapping[str, Any]
) -> list[Param]:
    """The search space as Params; UserError naming the entry for anything unusable."""
    params = []
    for path, spec in space.items():
        where = f"search.{path}"
        is_group = path in group_choices and not isinstance(
            OmegaConf.select(cfg, path), int | float
        )
        if not is_group and OmegaConf.select(cfg, path, default="<missing>") == "<missing>":
            raise UserError(
                f"{where}: {path!r} is not a config path of this run: search existing keys "
                "(e.g. optimizer.lr, data.batch_size, model.dropout) or config groups (optimizer)"
            )
        if not isinstance(spec, Mapping | DictConfig):
            raise UserError(f"{where} must be a mapping like {{type: float, low: 0.0, high: 0.5}}")
        kind = spec.get("type")
        if kind == "categorical":
            choices = spec.get("choices")
            if not choices:
                raise UserError(f"{where}.choices is empty: list at least one value")
            distribution: optuna.distributions.BaseDistribution = (
                optuna.distributions.CategoricalDistribution([_choice_text(c) for c in choices])
            )
        elif kind in ("float", "int"):
            low, high, log = spec.get("low"), spec.get("high"), bool(spec.get("log", False))
            if not isinstance(low, int | float) or not isinstance(high, int | float):
                raise UserError(f"{where} needs numeric low and high")
            if low >= high:
                raise UserError(f"{where}: low={low} must be < high={high}")
            if log and low <= 0:
                raise UserError(f"{where}: a log scale needs low > 0 (got low={low})")
            if kind == "float":
                distribution = optuna.distributions.FloatDistribution(
                    float(low), float(high), log=log
                )
            else:
                distribution = optuna.distributions.IntDistribution(int(low), int(high), log=log)
        else:
            raise UserError(f"{where}.type={kind!r} is unknown: use float, int or categorical")
        params.append(Param(path, distribution, is_group))
    if not params:
        raise UserError("search is empty: add at least one config path to search")
    return params


def extreme_overrides(params: list[Param]) -> list[list[str]]:
    """Override sets at the ends of every range: each must compose to a valid run config."""
    ends: list[list[str]] = [[], []]
    for param in params:
        distribution = param.distribution
        if isinstance(distribution, optuna.distributions.CategoricalDistribution):
            for choice in distribution.choices:
                ends.append([f"{param.path}={choice}"])
        else:
            low, high = distribution.low, distribution.high  # type: ignore[attr-defined]
            ends[0].append(f"{param.path}={low}")
            ends[1].append(f"{param.path}={high}")
    return [overrides for overrides in ends if overrides]


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise UserError(f"sweep.sampler={name!r} is unknown: use one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=5, n_warmup_steps=max(1, max_epochs // 40)
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs)
    if name in ("none", None):
        return optuna.pruners.NopPruner()
    raise UserError(f"sweep.pruner={name!r} is unknown: use one of {', '.join(PRUNERS)}")


_RDB_URL = re.compile(r"^(sqlite|postgresql|mysql|oracle|mssql)(\+\w+)?://")


def default_storage(study_name: str) -> str:
    """A journal file under mlruns/: safe for several processes, no server to start."""
    return str(PROJECT_ROOT / "mlruns" / "optuna" / f"{study_name}.journal")


def make_storage(
    url: str,
    heartbeat_s: int = 10,
    on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL (RDB) or a file path (journal); UserError if unusable.

    An RDB storage records heartbeats every `heartbeat_s` seconds; a trial silent for three
    times that is stale, and whoever fails it (quota.claim_trial) calls `on_stale` on it.
    """
    shown = redact(url)
    if _RDB_URL.match(url):
        try:
            with _schema_lock(url), warnings.catch_warnings():
                # heartbeats are "experimental": one warning a start
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    database_url(url),
                    heartbeat_interval=heartbeat_s,
                    grace_period=3 * heartbeat_s,
                    heartbeat_stale_trial_callback=on_stale,
                    # Few connections per process: many hosts x workers share one server's
                    # max_connections (100 by default).
                    engine_kwargs={**_engine_kwargs(url), "pool_size": 1, "max_overflow": 3},
                )
        except Exception as error:  # sqlalchemy/driver errors: bad host, password, database
            reason = redact(str(error).strip().splitlines()[0]) if str(error).strip() else ""
            raise UserError(
                f"sweep.storage={shown!r} cannot be used: {reason or type(error).__name__}"
            ) from error
    if "://" in url:
        raise UserError(
            f"sweep.storage={shown!r} is not a storage Optuna can use: give a journal file path, "
            "sqlite:///file.db or postgresql://user@host:5432/db"
        )
    path = Path(url).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(str(path), lock_obj=FlockLock(f"{path}.lock"))  # type: ignore[arg-type]
    except OSError as error:
        raise UserError(f"sweep.storage={shown!r} cannot be written: {error.strerror}") from error
    return optuna.storages.JournalStorage(backend)


class FlockLock:
    """The journal file's lock, held with flock(2): the kernel frees it when its holder dies.

    Optuna's default lock is a lock file that a SIGKILLed worker leaves behind; every other
    worker then waits out a 30 s grace period before breaking it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._handle: IO[str] | None = None

    def acquire(self) -> bool:
        handle = open(self.path, "a")  # noqa: SIM115  # held until release()
        fcntl.flock(handle, fcntl.LOCK_EX)
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


_SCHEMA_LOCK_KEY = 0x5F0D7A5C4E3A  # any constant: one lock per database, held for seconds


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """Hosts opening a fresh PostgreSQL database at once would race to create Optuna's tables
    (duplicate key errors): they take turns on an advisory lock while the storage opens."""
    if not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(
        database_url(url), poolclass=sqlalchemy.pool.NullPool, **_engine_kwargs(url)
    )
    with engine.connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        lock = sqlalchemy.text("SELECT pg_advisory_lock(:key)")
        connection.execute(lock, {"key": _SCHEMA_LOCK_KEY})
        try:
            yield
        finally:
            unlock = sqlalchemy.text("SELECT pg_advisory_unlock(:key)")
            connection.execute(unlock, {"key": _SCHEMA_LOCK_KEY})


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    return {}


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None

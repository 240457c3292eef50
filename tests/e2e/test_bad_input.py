"""Bad input, systematically: configs, search spaces, CSV data, sweep settings, storage URLs
and run ids.

Each case runs a script's entry point in this process (tests/helpers.cli), in its own folder
with a private MLflow store and a private Optuna journal, and must give exactly one stderr line
starting with `error: `, exit code 2, no traceback, and write nothing: no MLflow run, no Optuna
study, no sweep folder. One case per script also runs as a real process (SUBPROCESS_CASES): the
exit code and the output a user sees come from the process itself.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from helpers import all_runs, cli, copy_store, one_error_line, tiny
from study.sweep.backends import make_storage
from study.sweep.devices import visible_gpus

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-8c1e2f"  # must never be shown
STUDY = "bad_input"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # free again once closed: nobody listens there


CSVS = {
    "string_column.csv": "a,b,y\n1,red,0\n2,blue,1\n3,red,0\n4,blue,1\n",
    "header_only.csv": "a,b,y\n",
    "one_class.csv": "a,b,y\n" + "".join(f"{i},{i * 2},1\n" for i in range(30)),
    "empty.csv": "",
    "notarget.csv": "a,b,c\n1,2,0\n3,4,1\n",
    "gap.csv": "a,b,y\n1,2,0\n3,4,1\n5,,0\n",
    # Two classes, but the only row of class 1 (index 20) is held out by the seed-0 split.
    "one_class_in_training.csv": "a,y\n" + "".join(f"{i},{int(i == 20)}\n" for i in range(30)),
    "constant_target.csv": "a,y\n" + "".join(f"{i},2.5\n" for i in range(30)),
    "huge_features.csv": "a,y\n" + "".join(f"{(-1) ** i}e308,{i % 2}\n" for i in range(30)),
    "huge_targets.csv": "a,y\n" + "".join(f"{i},{(-1) ** i}e200\n" for i in range(30)),
    "infinite.csv": "a,y\n1,0\ninf,1\n3,0\n4,1\n",
    "e300.csv": "a,y\n" + "".join(f"{(-1) ** i}e300,{i % 2}\n" for i in range(30)),
    "one_row.csv": "a,y\n1,0\n",  # one row: one class too, refused as such first
    "target_only.csv": "y\n" + "".join(f"{i % 2}\n" for i in range(30)),
    "regression_target.csv": "a,y\n" + "".join(f"{i},{i * 0.37:.2f}\n" for i in range(30)),
}
# Bad data: a sweep gives the line a single run gives, before anything is written.
BAD_DATA = [
    ("gap", "gap.csv", ["'b'", "missing", "line 4"]),
    ("string-column", "string_column.csv", ["'b'", "non-numeric", "line 2"]),
    ("infinite", "infinite.csv", ["'a'", "infinite", "line 3"]),
    ("1e300", "e300.csv", ["feature values too large"]),
    ("one-row", "one_row.csv", ["one class only"]),
    ("one-class", "one_class.csv", ["data.target='y'", "one class"]),
    ("header-only", "header_only.csv", ["header but no rows"]),
    ("empty", "empty.csv", ["empty"]),
    ("target-only", "target_only.csv", ["only the target column"]),
    ("classifier-on-regression", "regression_target.csv", ["regression", "model=regressor"]),
]
RUN_CSV_CASES = {"gap", "string-column", "one-class", "header-only", "empty"}  # below, as csv-*
# Dotted keys cannot be added to `search` from the command line (`+search.KEY=` takes top-level
# keys only), so a user puts a search space of their own in a file and passes --config-dir.
SEARCHES = {
    "unknown_type": "optimizer.lr: {type: uniform, low: 1.0e-4, high: 1.0e-1}",
    "int_reversed": "trainer.max_epochs: {type: int, low: 10, high: 5}",
    "not_a_mapping": "optimizer.lr: 0.01",
    "bad_choice": "model.activation: {type: categorical, choices: [relu, swish]}",
    "empty": "{}",
    "unknown_path": "model.nope: {type: float, low: 0.0, high: 1.0}",
    "reversed": "model.dropout: {type: float, low: 0.5, high: 0.1}",
    "log_from_zero": "optimizer.lr: {type: float, low: 0.0, high: 0.1, log: true}",
    "no_choices": "data.batch_size: {type: categorical, choices: []}",
    "dropout_too_high": "model.dropout: {type: float, low: 0.0, high: 1.5}",
}


@dataclass(frozen=True)
class Case:
    """A bad input: the script, its arguments and fragments its error line must contain.

    Arguments may name {csv} (the folder of CSVS), {store} (the private MLflow store) and
    {closed} (a port nobody listens on). `private` arguments are added unless the case sets
    the same key itself.
    """

    name: str
    script: str  # run | sweep | reproduce | compare
    args: tuple[str, ...]
    fragments: tuple[str, ...]
    sweep: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sweep", self.script == "sweep")


def run(name: str, args: list[str], fragments: list[str]) -> Case:
    return Case(name, "run", tuple(args), tuple(fragments))


def sweep(name: str, args: list[str], fragments: list[str]) -> Case:
    return Case(name, "sweep", tuple(args), tuple(fragments))


def script(name: str, which: str, args: list[str], fragments: list[str]) -> Case:
    return Case(name, which, tuple(args), tuple(fragments))


CSV = ["data=csv", "data.target=y"]
UNREACHABLE_PG = f"postgresql://root:{PASSWORD}@127.0.0.1:1/x"
NO_RUN = "0" * 32

CASES = [
    # --- configs (scripts/run.py) -----------------------------------------------------------
    run("unknown-key", ["model.foo=1"], ["model.foo"]),
    run("unknown-group-option", ["model=bogus"], ["model/bogus", "classifier, regressor"]),
    run("unknown-config", ["nosuchconfig"], ["nosuchconfig", "train"]),
    run("lr-zero", ["optimizer.lr=0"], ["optimizer.lr", "> 0"]),
    run("batch-size-zero", ["data.batch_size=0"], ["data.batch_size", ">= 1"]),
    run("dropout-too-high", ["model.dropout=1.5"], ["model.dropout", "[0, 1)"]),
    run("no-hidden-layers", ["model.hidden_sizes=[]"], ["model.hidden_sizes", "non-empty"]),
    run("zero-epochs", ["trainer.max_epochs=0"], ["trainer.max_epochs", ">= 1"]),
    run("data-model-mismatch", ["data=wine", "model=regressor"], ["data=wine", "model=regressor"]),
    run("negative-noise", ["data.noise=-0.1"], ["data.noise=-0.1", ">= 0"]),
    run("three-samples", ["data.n_samples=3"], ["data.n_samples=3", ">= 10"]),
    run("val-fraction-0.95", ["data.val_fraction=0.95"], ["data.val_fraction", "< 0.9"]),
    run("accelerator-tpu", ["trainer.accelerator=tpu"], ["trainer.accelerator='tpu'", "cpu"]),
    run("patience-zero", ["trainer.early_stopping.patience=0"], ["patience=0", ">= 1"]),
    run("hidden-size-text", ["model.hidden_sizes=[a]"], ["model.hidden_sizes", "integer"]),
    run("lr-text", ["optimizer.lr=fast"], ["optimizer.lr='fast'", "number"]),
    run("seed-fraction", ["seed=1.5"], ["seed=1.5", "integer"]),
    run("seed-negative", ["seed=-1"], ["seed=-1", "[0, 4294967295]"]),
    run("seed-too-large", ["seed=4294967296"], ["seed=4294967296", "[0, 4294967295]"]),
    run("lr-nan", ["optimizer.lr=nan"], ["optimizer.lr=nan", "finite"]),
    run("lr-inf", ["optimizer.lr=inf"], ["optimizer.lr=inf", "finite"]),
    run("weight-decay-nan", ["optimizer.weight_decay=nan"], ["optimizer.weight_decay=nan"]),
    run("noise-nan", ["data.noise=nan"], ["data.noise=nan", "finite"]),
    run("tracking-ftp", ["tracking.uri=ftp://x"], ["tracking.uri='ftp://x'", "sqlite:///"]),
    run("run-dir-unwritable", ["hydra.run.dir=/proc/nope"], ["/proc/nope", "No such file"]),
    run(
        "tracking-db-unreachable",
        [f"tracking.uri={UNREACHABLE_PG}"],
        ["tracking.uri=", "root:***@127.0.0.1:1/x", "cannot be reached"],
    ),
    run(
        "tracking-folder-unwritable",
        ["tracking.uri=sqlite:////proc/study/mlflow.db"],
        ["tracking.uri=", "/proc/study", "cannot be created"],
    ),
    run(
        "min-delta-negative", ["trainer.early_stopping.min_delta=-0.1"], ["min_delta=-0.1", ">= 0"]
    ),
    run("engine-unknown", ["trainer.engine=turbo"], ["trainer.engine='turbo'", "single, packed"]),
    run("grid-syntax-in-one-run", ["optimizer.lr=0.1,0.2"], ["optimizer.lr=0.1,0.2", "list"]),
    run(
        "added-unknown-key",
        ["+optimizer.learning_rate=0.1"],
        ["+optimizer.learning_rate=0.1", "keys of optimizer are lr, weight_decay"],
    ),
    run("misspelled-key", ["trainer.max_epoch=3"], ["did you mean trainer.max_epochs?"]),
    run("misspelled-section", ["optimiser.lr=0.1"], ["did you mean optimizer.lr?"]),
    # --- CSV data ---------------------------------------------------------------------------
    run("csv-missing", [*CSV, "data.path={csv}/absent.csv"], ["absent.csv", "does not exist"]),
    run("csv-empty", [*CSV, "data.path={csv}/empty.csv"], ["empty"]),
    run("csv-no-target", [*CSV, "data.path={csv}/notarget.csv"], ["data.target='y'"]),
    run("csv-missing-value", [*CSV, "data.path={csv}/gap.csv"], ["'b'", "missing", "line 4"]),
    run(
        "csv-string-column",
        [*CSV, "data.path={csv}/string_column.csv"],
        ["'b'", "non-numeric", "line 2"],
    ),
    run("csv-header-only", [*CSV, "data.path={csv}/header_only.csv"], ["header but no rows"]),
    run(
        "csv-one-class", [*CSV, "data.path={csv}/one_class.csv"], ["data.target='y'", "one class"]
    ),
    run(
        "csv-one-class-in-training",
        [*CSV, "data.path={csv}/one_class_in_training.csv"],
        ["training split holds one class only"],
    ),
    run(
        "csv-constant-target",
        [*CSV, "model=regressor", "data.path={csv}/constant_target.csv"],
        ["target is constant"],
    ),
    run(
        "csv-huge-features",
        [*CSV, "data.path={csv}/huge_features.csv"],
        ["feature values too large"],
    ),
    run(
        "csv-huge-targets",
        [*CSV, "model=regressor", "data.task=regression", "data.path={csv}/huge_targets.csv"],
        ["target values too large"],
    ),
    run(
        "csv-task-unknown",
        [*CSV, "data.path={csv}/one_class.csv", "data.task=x"],
        ["data.task='x'"],
    ),
    *[
        kind(f"{kind.__name__}-csv-{name}", [*CSV, f"data.path={{csv}}/{file}"], fragments)
        for kind in (run, sweep)
        for name, file, fragments in BAD_DATA
        if kind is sweep or name not in RUN_CSV_CASES
    ],
    # --- search spaces (scripts/run.py -m sweep) --------------------------------------------
    sweep("search-type-unknown", ["search=unknown_type"], ["search.optimizer.lr.type='uniform'"]),
    sweep("search-int-reversed", ["search=int_reversed"], ["trainer.max_epochs", "low=10"]),
    sweep("search-not-a-mapping", ["search=not_a_mapping"], ["search.optimizer.lr", "mapping"]),
    sweep("search-bad-choice", ["search=bad_choice"], ["model.activation=swish"]),
    sweep("search-empty", ["search=empty"], ["search is empty"]),
    sweep("search-unknown-group", ["search=nosuchfile"], ["search/nosuchfile"]),
    sweep(
        "search-unknown-path", ["search=unknown_path"], ["search.model.nope", "not a config path"]
    ),
    sweep(
        "search-unknown-path-cli",
        ["+search.nope={{type:float,low:0,high:1}}"],
        ["search.nope", "not a config path"],
    ),
    sweep("search-low-above-high", ["search=reversed"], ["search.model.dropout", "low=0.5"]),
    sweep("search-log-from-zero", ["search=log_from_zero"], ["search.optimizer.lr", "low > 0"]),
    sweep("search-empty-choices", ["search=no_choices"], ["search.data.batch_size.choices"]),
    sweep(
        "search-range-end-invalid", ["search=dropout_too_high"], ["model.dropout=1.5", "[0, 1)"]
    ),
    # --- sweep settings ---------------------------------------------------------------------
    sweep("zero-trials", ["sweep.n_trials=0"], ["sweep.n_trials=0", ">= 1"]),
    sweep("timeout-zero", ["sweep.timeout=0"], ["sweep.timeout=0", "seconds > 0"]),
    sweep("timeout-words", ["sweep.timeout=soon"], ["sweep.timeout='soon'", "null"]),
    sweep("fork-server-words", ["sweep.fork_server=maybe"], ["sweep.fork_server='maybe'", "true"]),
    sweep("zero-max-failures", ["sweep.max_failures=0"], ["sweep.max_failures=0", ">= 1"]),
    sweep("zero-trials-per-gpu", ["sweep.trials_per_gpu=0"], ["sweep.trials_per_gpu=0", ">= 1"]),
    sweep("direction-sideways", ["sweep.direction=sideways"], ["sweep.direction='sideways'"]),
    sweep("unknown-sampler", ["sweep.sampler=bogus"], ["sweep.sampler='bogus'", "tpe, random"]),
    sweep("unknown-pruner", ["sweep.pruner=bogus"], ["sweep.pruner='bogus'", "median, hyperband"]),
    sweep("zero-workers", ["sweep.workers=0"], ["sweep.workers=0", ">= 1"]),
    sweep("malformed-storage", ["sweep.storage=foo://bar"], ["sweep.storage='foo://bar'"]),
    sweep("storage-folder", ["sweep.storage={csv}"], ["sweep.storage=", "is a folder"]),
    sweep("study-name-empty", ["sweep.study_name=''"], ["sweep.study_name=''", "not allowed"]),
    sweep(
        "study-name-outside",
        ["sweep.study_name=../../../tmp/x"],
        ["sweep.study_name='../../../tmp/x'", "not allowed"],
    ),
    sweep("study-name-slash", ["sweep.study_name=a/b"], ["sweep.study_name='a/b'"]),
    sweep("devices-not-visible", ["sweep.devices=[7]"], ["GPU 7", "not visible"]),
    sweep("metric-never-logged", ["sweep.metric=val/r2"], ["sweep.metric='val/r2'", "never"]),
    sweep("search-low-nan", ["+search.x={{type:float,low:nan,high:1}}"], ["low=nan", "finite"]),
    sweep("retries-negative", ["sweep.retries=-1"], ["sweep.retries=-1", ">= 0"]),
    sweep("heartbeat-zero", ["sweep.heartbeat_s=0"], ["sweep.heartbeat_s=0", ">= 1"]),
    sweep("threads-zero", ["sweep.threads_per_worker=0"], ["threads_per_worker=0", ">= 1"]),
    sweep("grid-syntax-in-a-study", ["optimizer.lr=0.1,0.2"], ["is a Hydra sweep", "search.*"]),
    sweep("added-unknown-sweep-key", ["+sweep.n_trial=5"], ["did you mean sweep.n_trials?"]),
    sweep("misspelled-sweep-key", ["sweep.n_trial=5"], ["did you mean sweep.n_trials?"]),
    sweep("multirun-with-cfg", ["--cfg", "job"], ["--cfg shows the config", "-m runs"]),
    sweep(
        "search-range-of-no-such-path",
        ["search.model.nope.high=0.3"],
        ["search.model.nope", "not a config path"],
    ),
    *(
        []
        if visible_gpus()  # these need a machine without one
        else [
            run("gpu-without-gpu", ["trainer.accelerator=gpu"], ["accelerator=gpu", "no CUDA"]),
            sweep("gpu-without-gpu-sweep", ["trainer.accelerator=gpu"], ["no CUDA GPU"]),
        ]
    ),
    # --- storage URLs -----------------------------------------------------------------------
    sweep(
        "storage-unreachable",
        [f"sweep.storage={UNREACHABLE_PG}"],
        ["sweep.storage='postgresql://root:***@127.0.0.1:1/x'", "cannot be used"],
    ),
    sweep(
        "storage-no-such-database",
        ["sweep.storage=postgresql://root@127.0.0.1:5432/study_no_such_db"],
        ["sweep.storage=", "study_no_such_db", "does not exist"],
    ),
    sweep(
        "storage-sqlite-path",
        ["sweep.storage={csv}/optuna.db"],
        ["names a SQLite file", "sqlite:///", "/optuna.db", ".journal"],
    ),
    sweep(
        "storage-unwritable-journal",
        ["sweep.storage=/proc/x.journal"],
        ["sweep.storage='/proc/x.journal'", "cannot be written"],
    ),
    sweep(
        "sweep-tracking-server-down",
        ["tracking.uri=http://127.0.0.1:{closed}"],
        ["tracking.uri='http://127.0.0.1:", "cannot be reached"],
    ),
    # --- run ids and stores (scripts/reproduce.py, scripts/compare.py) -----------------------
    script("reproduce-unknown-id", "reproduce", [NO_RUN], [f"no run '{NO_RUN}'"]),
    script("reproduce-malformed-id", "reproduce", ["../../etc"], ["'../../etc' is not a run id"]),
    script(
        "reproduce-no-store",
        "reproduce",
        [NO_RUN, "--tracking-uri", "sqlite:///{csv}/absent/mlflow.db"],
        ["no MLflow store", "absent/mlflow.db"],
    ),
    script(
        "reproduce-server-down",
        "reproduce",
        [NO_RUN, "--tracking-uri", "http://root:" + PASSWORD + "@127.0.0.1:{closed}"],
        ["root:***@127.0.0.1", "cannot be reached"],
    ),
    script("reproduce-no-id", "reproduce", [], ["run_id", "usage: reproduce.py"]),
    script(
        "compare-no-store",
        "compare",
        [NO_RUN, NO_RUN + "0", "--tracking-uri", "sqlite:///{csv}/absent/mlflow.db"],
        ["no MLflow store", "absent/mlflow.db", "holds the runs"],
    ),
    script("compare-one-id", "compare", [NO_RUN], ["at least two different runs, got 1"]),
    script("compare-ftp-store", "compare", ["a", "b", "--tracking-uri", "ftp://x"], ["ftp://x"]),
    script("compare-output-folder", "compare", ["a", "b", "--output", "{csv}"], ["is a folder"]),
    script("compare-output-txt", "compare", ["a", "b", "--output", "x.txt"], ["x.txt", ".png"]),
]


# One case per script as a real process: what the user's shell sees.
SUBPROCESS_CASES = {"lr-text", "zero-trials", "reproduce-no-id", "compare-one-id"}


@dataclass
class Outcome:
    result: subprocess.CompletedProcess[str]
    work: Path

    @property
    def store(self) -> Path:
        return self.work / "mlruns" / "mlflow.db"

    @property
    def journal(self) -> Path:
        return self.work / "study.journal"

    @property
    def sweep_dir(self) -> Path:
        return self.work / "sweep"


def _with_defaults(args: list[str], defaults: list[str]) -> list[str]:
    keys = {arg.split("=", 1)[0].lstrip("+~") for arg in args if "=" in arg}
    return [*[d for d in defaults if d.split("=", 1)[0] not in keys], *args]


def _argv(case: Case, work: Path, csv: Path, conf: Path, closed: int) -> list[str]:
    """The arguments after scripts/<script>.py (run.py for sweeps)."""
    store = f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"
    args = [a.format(csv=csv, store=store, closed=closed) for a in case.args]
    if case.script in ("reproduce", "compare"):
        if "--tracking-uri" not in args:
            args += ["--tracking-uri", store]
        return args
    private = [f"tracking.uri={store}", *tiny()]
    if any(arg.startswith("data=") for arg in args):  # only the lecture data has n_samples
        private = [arg for arg in private if not arg.startswith("data.n_samples")]
    if not case.sweep:
        config_names = [arg for arg in args if "=" not in arg]  # first, as a user types them
        overrides = [arg for arg in args if "=" in arg]
        return [*config_names, *_with_defaults(overrides, private)]
    private += [
        f"sweep.storage={work / 'study.journal'}",
        f"sweep.study_name={STUDY}",
        f"hydra.sweep.dir={work / 'sweep'}",
        "sweep.workers=1",
    ]
    return ["--config-dir", str(conf), "-m", "sweep", *_with_defaults(args, private)]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Every case run once."""
    csv = tmp_path_factory.mktemp("csv")
    for name, text in CSVS.items():
        (csv / name).write_text(text)
    conf = tmp_path_factory.mktemp("conf")
    (conf / "search").mkdir()
    for name, text in SEARCHES.items():
        (conf / "search" / f"{name}.yaml").write_text(text + "\n")
    closed = _closed_port()
    # A store that exists and holds an experiment, but no run: for reproduce and compare.
    holding_no_run = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{holding_no_run}").create_experiment("study")
    results = {}
    for case in CASES:
        work = tmp_path_factory.mktemp(case.name)
        if case.script in ("reproduce", "compare"):
            copy_store(holding_no_run, work / "mlruns" / "mlflow.db")
        argv = _argv(case, work, csv, conf, closed)
        script = "run" if case.sweep else case.script
        if case.name in SUBPROCESS_CASES:
            result = subprocess.run(
                [sys.executable, str(ROOT / "scripts" / f"{script}.py"), *argv],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=300,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        else:
            result = cli(script, *argv, cwd=work)
        results[case.name] = Outcome(result, work)
    return results


def test_the_table_covers_at_least_50_inputs_of_every_kind() -> None:
    assert len(CASES) >= 50
    assert len({case.name for case in CASES}) == len(CASES)
    assert {case.script for case in CASES} == {"run", "sweep", "reproduce", "compare"}
    assert {case.script for case in CASES if case.name in SUBPROCESS_CASES} == {
        "run",
        "sweep",
        "reproduce",
        "compare",
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_error_line_naming_the_problem(
    outcomes: dict[str, Outcome], case: Case
) -> None:
    outcome = outcomes[case.name]
    line = one_error_line(outcome.result)
    for fragment in case.fragments:
        assert fragment in line, line
    assert PASSWORD not in outcome.result.stdout + outcome.result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_writes_no_run_no_study_and_no_sweep_folder(
    outcomes: dict[str, Outcome], case: Case
) -> None:
    outcome = outcomes[case.name]
    if outcome.store.exists():
        client = MlflowClient(f"sqlite:///{outcome.store}")
        assert all_runs(client) == []
        assert client.get_experiment_by_name(STUDY) is None
    if outcome.journal.exists():
        storage = make_storage(str(outcome.journal))
        assert optuna.get_all_study_names(storage) == []
    assert not outcome.sweep_dir.exists()
    assert not (outcome.work / "outputs").exists()  # not even Hydra's .hydra/ of a run

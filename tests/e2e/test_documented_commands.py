"""Every `python scripts/...` command README.md, docs/*.md and the configs' comments show, run
as written from a folder that looks like the project root (its scripts/ and docs/ linked in, so
what a command writes where it runs stays out of the project), shrunk for time by overrides
appended after it (few epochs, trials and students) and tracked through MLFLOW_TRACKING_URI.
Each runs its script's entry point in this process (tests/helpers.cli: a process would spend
~6 s importing torch, Lightning and MLflow); the real scripts run as processes in test_cli.py
and e2e/test_sweep.py. Each must succeed and print the line that says it did its job.

`RUN_ID` placeholders get the ids of runs an earlier command made, and a command that runs a
study's `best_config` runs in the folder of the documented study; `[optional parts]` and
`...` of a synopsis are left out. A command that needs a service absent here must fail
clearly (one error line, exit code 2); one that starts a long-running server is skipped.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import cli, copy_store, one_error_line
from study.tracking import Store

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
_COMMAND = re.compile(r"^(?:[A-Z_]+=\S+\s+)*python scripts/\S+.*")
# Needs a service that is not here: the command must say so in one line.
UNREACHABLE = {"mlflow-host": "cannot be reached", "db-host": "cannot be reached"}
SERVER = "scripts/ui.py"  # serves until stopped


def _normalized(command: str) -> str:
    """A synopsis made runnable: comments, `[optional]` parts and `...` left out."""
    command = command.split(": ")[0]  # "python scripts/run.py [key=value ...]: what it does"
    command = re.sub(r"\s+#.*$", "", command)
    command = re.sub(r"(?<=\s)\[[^\]]*\]", "", command)  # [--output F], not =[64,32]
    return " ".join(word for word in command.split() if word != "...")


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _documented_commands() -> Iterator[str]:
    for document in DOCUMENTS:
        text = document.read_text()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                if _COMMAND.match(line.strip()):
                    yield line.strip()
        yield from re.findall(r"`(python scripts/[^`]+)`", text)


def _config_commands() -> Iterator[str]:
    for config in sorted((ROOT / "conf").rglob("*.yaml")):
        for line in config.read_text().splitlines():
            if not line.startswith("#"):
                break  # the comment header ends at the first setting
            found = re.search(r"python scripts/[^`]*", line)
            if found:
                yield found.group(0)


def documented_commands() -> list[str]:
    commands = [_normalized(c) for c in [*_documented_commands(), *_config_commands()]]
    return list(dict.fromkeys(commands))


COMMANDS = documented_commands()
NEEDS_RUN_IDS = [c for c in COMMANDS if "RUN_ID" in c]
NEEDS_STUDY = [c for c in COMMANDS if "--config-name best_config" in c]
FIRST = [c for c in COMMANDS if c not in NEEDS_RUN_IDS + NEEDS_STUDY and SERVER not in c]
GRID = "python scripts/run.py -m model.dropout=0.0,0.5 hydra/sweeper=basic"  # two runs, one store
STUDY = "python scripts/run.py -m sweep"  # writes multirun/lecture-classifier/best_config.yaml

# The line each kind of command prints when it did its job.
_RUN_ID = "[0-9a-f]{32}"
_SINGLE_RUN = rf"^run {_RUN_ID} on \S+: best epoch \d+ of \d+, best val/loss \d"
EXPECTED = {
    "help": r"^Commands \(from the project root; key=value overrides any config value\):$",
    "sweep": r"^study \S+: \d+ complete, \d+ pruned, \d+ failed$",
    "compare": rf"^compare run {_RUN_ID}: \S+compare\.png$",
    "grid": _SINGLE_RUN,
    "run": _SINGLE_RUN,
    "reproduce.py": r"^identical$",
    "compare.py": r"^figure: \S+\.png$",
}


def expected_line(command: str) -> str:
    """The pattern of the line `command`'s output must hold."""
    words = shlex.split(command)
    script = next(Path(w).name for w in words if w.startswith("scripts/"))
    if script != "run.py":
        return EXPECTED[script]
    if "--help" in words:
        return EXPECTED["help"]
    if "-m" in words:
        for config in ("sweep", "compare"):
            if config in words:
                return EXPECTED[config]
        return EXPECTED["grid"]
    return EXPECTED["run"]


@dataclass
class Ran:
    command: str
    result: subprocess.CompletedProcess[str]


def _shrunk(words: list[str], folder: Path) -> list[str]:
    """Overrides appended to a scripts/run.py command: the same command, smaller and private."""
    extra = ["trainer.max_epochs=2"]
    if not any(w.startswith("data=") and w != "data=lecture" for w in words):
        extra.append("data.n_samples=60")
    if "sweep" in words:
        extra += ["sweep.n_trials=1", "sweep.workers=1"]
        if not any(w.startswith("sweep.storage=") for w in words):
            extra.append(f"sweep.storage={folder / 'study.journal'}")
    return extra


def _run(command: str, folder: Path, store: Path, run_ids: list[str] | None = None) -> Ran:
    """`command` run in `folder`, tracked into `store`; RUN_ID filled from `run_ids`."""
    for linked in ("scripts", "docs"):
        if not (folder / linked).exists():  # a study's folder runs its best_config after it
            (folder / linked).symlink_to(ROOT / linked)
    words = shlex.split(command)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    while "=" in words[0]:  # VARIABLE=value before the command
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    ids = iter(run_ids or [])
    words = [next(ids) if w == "RUN_ID" else w for w in words]
    if words[1] == "scripts/run.py" and "--help" not in words:
        words += _shrunk(words, folder)
    saved = dict(os.environ)
    os.environ.update(env)  # sweep workers, processes of their own, inherit it
    try:
        result = cli(Path(words[1]).stem, *words[2:], cwd=folder)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return Ran(command, result)


def _run_ids(stdout: str) -> list[str]:
    return re.findall(r"^run ([0-9a-f]{32}) ", stdout, re.M)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Ran]:
    """Every documented command; those that need run ids last, with the runs (and the store)
    of the documented grid, and those that run a study's best config in the study's folder."""
    assert GRID in FIRST, "the docs no longer show the grid whose runs RUN_ID stands for"
    assert STUDY in FIRST, "the docs no longer show the study whose best config they run"
    template = tmp_path_factory.mktemp("template") / "mlflow.db"
    Store.from_uri(f"sqlite:///{template}").client().search_experiments()
    folders = {c: tmp_path_factory.mktemp("command") for c in COMMANDS}
    stores = {c: copy_store(template, folders[c] / "mlflow.db") for c in FIRST}
    stores.update(dict.fromkeys(NEEDS_RUN_IDS, stores[GRID]))
    done = {c: _run(c, folders[c], stores[c]) for c in FIRST}
    ids = _run_ids(done[GRID].result.stdout)
    done.update({c: _run(c, folders[c], stores[c], ids) for c in NEEDS_RUN_IDS})
    done.update({c: _run(c, folders[STUDY], stores[STUDY]) for c in NEEDS_STUDY})
    return done


def test_the_docs_and_configs_show_the_commands_a_newcomer_needs() -> None:
    for expected in [
        "python scripts/run.py",
        "python scripts/run.py --help",
        "python scripts/run.py data=csv data.path=docs/grades.csv data.target=passed",
        "python scripts/run.py -m sweep",
        "python scripts/run.py -m sweep search.model.dropout.high=0.3 sweep.study_name=narrow",
        "python scripts/run.py -m sweep sweep.timeout=600",
        "python scripts/run.py --config-dir multirun/lecture-classifier --config-name best_config",
        "python scripts/run.py -m compare preset=balanced,wide",
        "python scripts/reproduce.py RUN_ID",
        "python scripts/compare.py RUN_ID RUN_ID",
        "python scripts/ui.py",
    ]:
        assert expected in COMMANDS, expected


@pytest.mark.parametrize("command", COMMANDS)
def test_a_documented_command_works_as_written(ran: dict[str, Ran], command: str) -> None:
    if SERVER in command:
        pytest.skip("starts the MLflow UI, which serves until stopped (tests/e2e/test_sweep.py)")
    result = ran[command].result
    missing = [host for host in UNREACHABLE if host in command]
    if missing:
        line = one_error_line(result)
        # A sweep opens its Optuna storage before its tracking store: either may be named.
        assert any(host in line or UNREACHABLE[host] in line for host in missing), line
        return
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    pattern = expected_line(command)
    assert re.search(pattern, result.stdout, re.M), (pattern, result.stdout[-2000:])

"""Every entry point of scripts/: argv in, an exit code out.

`scripts/run.py [-m] [CONFIG] [key=value ...]` picks a primary config and hands the rest to
Hydra. Hydra treats every positional argument as an override, so `run.py -m sweep` would be a
parse error; a leading bare word naming a config in conf/ selects the primary config instead.
Heavy imports (torch, Lightning, MLflow) wait until the arguments are checked.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from study.errors import OneLineParser, UserError, report
from study.overrides import (
    not_in_struct_hint,
    override_key,
    refuse_unknown_added_keys,
    refused_key,
    search_overrides,
)
from study.paths import (
    CONF_DIR,
    TrackingChoice,
    choose_tracking_uri,
    script_command,
    script_path,
    store_option,
)
from study.secrets import redact

DEFAULT_CONFIG = "train"
# Hydra flags that take a value, so that value is not mistaken for a config name.
_FLAGS_WITH_VALUE = {
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--experimental-rerun",
}


def split_config_name(argv: Sequence[str]) -> tuple[str, list[str]]:
    """(`sweep`, rest) for `-m sweep a=1`; (`train`, argv) when no config name is given."""
    rest = list(argv)
    skip = False
    for index, arg in enumerate(rest):
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            skip = arg in _FLAGS_WITH_VALUE
            continue
        if "=" in arg or arg.startswith(("+", "~")):
            break
        del rest[index]
        return arg, rest
    return DEFAULT_CONFIG, rest


def one_line(error: BaseException) -> str:
    """A Hydra/OmegaConf/our error as a single line a user can act on."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = error.__cause__
    if cause is not None and str(cause).strip():
        cause_line = str(cause).strip().splitlines()[0]
        if cause_line not in lines:
            lines.append(cause_line)
    # Hydra appends its config search path to "Could not find" errors: noise for a user.
    search_path = [i for i, line in enumerate(lines) if line.startswith("Config search path")]
    if search_path:
        lines = lines[: search_path[0]]
    if len(lines) > 2 and lines[1].startswith("Available options"):
        lines = [lines[0], f"{lines[1]} {', '.join(lines[2:])}"]
    text = "; ".join(line for line in lines if not line.startswith(("full_key", "object_type")))
    return redact(text or type(error).__name__)


def remove_refused_outputs() -> None:
    """Remove what Hydra wrote for a refused single run (its output folder, holding nothing but
    Hydra's .hydra/ and the job's log, then the folders left empty up to the working
    directory): bad input writes nothing. A folder holding anything else is left as it is."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.RUN:  # a sweep's job: the sweep's folder is the sweeper's
        return
    folder = Path(hydra_cfg.runtime.output_dir).resolve()
    hydras = {str(hydra_cfg.output_subdir), f"{hydra_cfg.job.name}.log"}
    stop = Path.cwd().resolve()
    if stop not in folder.parents or {p.name for p in folder.iterdir()} - hydras:
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder = folder.parent
    while folder != stop:
        try:
            folder.rmdir()  # only if empty
        except OSError:
            return
        folder = folder.parent


def run_hydra(task: Callable[..., object], argv: Sequence[str], conf_dir: Path = CONF_DIR) -> int:
    """Run `task` under hydra.main with argv; bad input -> one line on stderr and exit code 2."""
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    config_name, hydra_argv = split_config_name(argv)
    if not (conf_dir / f"{config_name}.yaml").is_file():
        available = sorted(p.stem for p in conf_dir.glob("*.yaml"))
        print(
            f"error: no config named {config_name!r} in {conf_dir}: use one of "
            f"{', '.join(available)} (or key=value overrides)",
            file=sys.stderr,
        )
        return 2
    refusal = refuse_flags(hydra_argv, config_name)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    if has_search(conf_dir / f"{config_name}.yaml"):
        hydra_argv = search_overrides(hydra_argv)
    # Let errors reach us instead of Hydra printing a multi-line report and exiting with 1.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    main = hydra.main(config_path=str(conf_dir), config_name=config_name, version_base="1.3")
    user_errors: list[UserError] = []

    def reported_task(cfg: object) -> object:
        # A UserError is returned, not raised, through Hydra: Hydra would print its own
        # "Error executing job" line before ours.
        try:
            return task(cfg)
        except UserError as error:
            user_errors.append(error)
            remove_refused_outputs()
            return None

    saved_argv = sys.argv
    sys.argv = [saved_argv[0], *hydra_argv]
    try:
        main(reported_task)()
        if user_errors:
            raise user_errors[0]
    except (HydraException, OmegaConfBaseException) as error:
        key = refused_key(error)
        defined = _composed_without(key, conf_dir, config_name, argv) if key else None
        hint = not_in_struct_hint(key, defined) if key and defined is not None else None
        print(f"error: {redact(hint) if hint else one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # UserError: one line; anything else: a masked traceback
        return report(error)
    finally:
        sys.argv = saved_argv
    return 0


_MULTIRUN_FLAGS = ("-m", "--multirun")
_SHOW_FLAGS = ("--cfg", "-c", "--info", "-i")


def refuse_flags(hydra_argv: Sequence[str], config_name: str) -> str | None:
    """Why Hydra would refuse these flags together (with a traceback), and what works."""
    multirun = any(arg in _MULTIRUN_FLAGS for arg in hydra_argv)
    shown = next((arg for arg in hydra_argv if arg.split("=")[0] in _SHOW_FLAGS), None)
    if multirun and shown:
        return (
            f"{shown} shows the config without running anything, -m runs: use one of them "
            f"(python {shlex.quote(script_path('run'))} {config_name} {shown} job ...)"
        )
    return None


def has_search(config_file: Path) -> bool:
    """Whether a primary config holds a search space (a `search` default, as conf/sweep.yaml)."""
    import yaml

    try:
        defaults = yaml.safe_load(config_file.read_text()).get("defaults", [])
    except (OSError, AttributeError, yaml.YAMLError):
        return False
    return any(isinstance(item, dict) and "search" in item for item in defaults)


def _composed_without(
    refused: str, conf_dir: Path, config_name: str, argv: Sequence[str]
) -> DictConfig | None:
    """The config composed without the override of key `refused`, to find the nearest name."""
    from study.config import compose_config

    rest = [a for a in split_config_name(argv)[1] if "=" in a and override_key(a) != refused]
    try:
        return compose_config(str(conf_dir), config_name, search_overrides(rest))
    except Exception:  # the other overrides fail too: Hydra's own message then
        return None


_DEFAULT_STORE = "(default: MLFLOW_TRACKING_URI, else the project's)"
# Primary configs meant for -m; without it they train one run, which a user may not expect.
MULTIRUN_CONFIGS = {"sweep": "runs the Optuna study", "compare": "trains and compares the presets"}


def run_plan(cfg: DictConfig, choices: Mapping[str, Any]) -> list[str]:
    """What a run is about to do, read from its config alone (nothing loaded or imported)."""
    data = cfg.data
    if "path" in data:
        detail = f" ({data.path}, target {data.target})"
    elif "n_samples" in data:
        detail = f" ({data.n_samples} samples)"
    else:
        detail = ""
    model, trainer = cfg.model, cfg.trainer
    stopping = (
        f", early stopping after {trainer.early_stopping.patience} epochs without improvement"
        if trainer.early_stopping.enabled
        else ""
    )
    store = choose_tracking_uri(cfg.tracking.uri)
    return [
        f"training: data={choices.get('data')}{detail}, model={choices.get('model')} "
        f"{list(model.hidden_sizes)} {model.activation}, optimizer={choices.get('optimizer')} "
        f"lr={cfg.optimizer.lr}, up to {trainer.max_epochs} epochs{stopping}",
        f"tracking: {store.describe()}, experiment {cfg.tracking.experiment!r}",
    ]


def reproduce_command(run_id: str, tracking: TrackingChoice) -> str:
    """The command that reruns `run_id`, as typed from the current folder."""
    return script_command("reproduce", run_id) + store_option(tracking)


def train_job(cfg: DictConfig) -> float:
    """One tracked training run (Hydra's task function); returns its best validation loss."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from study.config import validate
    from study.data import precheck_data

    hydra_cfg = HydraConfig.get()
    refuse_unknown_added_keys(
        list(hydra_cfg.overrides.task),
        str(CONF_DIR),
        str(hydra_cfg.job.config_name),
        hydra_cfg.runtime.choices,
    )
    validate(cfg)  # before importing MLflow and Lightning: bad input is reported in seconds
    precheck_data(cfg)  # the data, as a sweep checks it: no torch yet
    config_name = hydra_cfg.job.config_name
    if hydra_cfg.mode == RunMode.RUN and config_name in MULTIRUN_CONFIGS:
        print(
            f"note: without -m, {config_name} trains one run; "
            f"python {shlex.quote(script_path('run'))} -m {config_name} "
            f"{MULTIRUN_CONFIGS[config_name]}"
        )
    print("\n".join(run_plan(cfg, hydra_cfg.runtime.choices)), flush=True)

    from study.run import run_one  # torch, Lightning, MLflow: seconds to import
    from study.tracking import PARENT_RUN_ENV, configure_process

    configure_process()
    outcome = run_one(
        cfg,
        Path(hydra_cfg.runtime.output_dir),
        list(hydra_cfg.overrides.task),
        run_name=cfg.tracking.get("run_name"),
        parent_run_id=os.environ.get(PARENT_RUN_ENV),  # set by `-m compare`
    )
    result = outcome.result
    print(
        f"run {outcome.run_id} on {result.device}: best epoch {result.best_epoch} of "
        f"{result.stopped_epoch}, best val/loss {result.best_val_loss:.4f}"
    )
    print(
        "  test: "
        + ", ".join(f"{k.removeprefix('test/')} {v:.4f}" for k, v in result.test_metrics.items())
    )
    print(f"  fit: {result.diagnosis.verdict} ({result.diagnosis.reason})")
    tracking = choose_tracking_uri(cfg.tracking.uri)
    print(f"  tracked in: {tracking.describe()}")
    print(f"  reproduce: {reproduce_command(outcome.run_id, tracking)}")
    return result.best_val_loss


def run_main() -> int:
    return run_hydra(train_job, sys.argv[1:])


def reproduce_main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description="Rerun an MLflow run from what it logged.")
    parser.add_argument("run_id")
    parser.add_argument("--tracking-uri", help=f"store holding the run {_DEFAULT_STORE}")
    try:
        args = parser.parse_args(argv)
        from study.tracking import RUN_STORE_HINT, Store, configure_process

        configure_process()
        Store.from_uri(args.tracking_uri).must_exist(RUN_STORE_HINT)  # before Lightning
        from study.reproduce import reproduce

        return reproduce(args.run_id, args.tracking_uri)
    except Exception as error:
        return report(error)


def port_number(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def ui_main(argv: list[str] | None = None) -> int:
    """`scripts/ui.py`: the MLflow UI on the project's store, in the model-training view."""
    from study.tracking import Store, configure_process
    from study.ui import serve_ui

    configure_process()

    parser = OneLineParser(description="Open the MLflow UI on the project's store.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: local)")
    parser.add_argument("--port", type=port_number, default=5000)
    parser.add_argument("--tracking-uri", help=f"store to browse {_DEFAULT_STORE}")
    parser.add_argument(
        "--experiment", help="experiment to open (default: all with runs, newest first)"
    )
    parser.add_argument(
        "--artifacts",
        help="a database store's artifact folder or bucket URI (default: ./mlartifacts)",
    )
    try:
        args = parser.parse_args(argv)
        store = Store.from_uri(args.tracking_uri)
        return serve_ui(store, args.host, args.port, args.experiment, args.artifacts)
    except Exception as error:
        return report(error)


STAMP = "%Y-%m-%d_%H-%M-%S"  # an output folder's name, as Hydra names a run's
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")  # formats matplotlib always writes


def check_figure_path(path: Path) -> None:
    """UserError unless `path` names a figure file of a format matplotlib writes."""
    if path.is_dir():
        raise UserError(f"--output {path} is a folder: give a file, e.g. {path / 'compare.png'}")
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise UserError(
            f"--output {path} is not a figure file: end it in {', '.join(FIGURE_SUFFIXES)}"
        )


def compare_main(argv: Sequence[str] | None = None) -> int:
    """`scripts/compare.py RUN_ID RUN_ID ...`: the comparison figure and table of MLflow runs."""
    from study.compare import FIGURE, compare_runs, table
    from study.tracking import Store, configure_process

    configure_process()

    parser = OneLineParser(description="Compare MLflow runs: curves side by side, verdicts, table")
    parser.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="two or more run ids")
    parser.add_argument("--tracking-uri", help=f"store holding the runs {_DEFAULT_STORE}")
    parser.add_argument(
        "--output",
        type=Path,
        help=f"figure path (default: outputs/compare/<date>_<time>/{FIGURE}, as runs have theirs)",
    )
    try:
        args = parser.parse_args(argv)
        args.output = args.output or Path("outputs", "compare", time.strftime(STAMP), FIGURE)
        check_figure_path(args.output)
        store = Store.from_uri(args.tracking_uri).must_exist(
            "pass --tracking-uri for the store that holds the runs"
        )
        runs = compare_runs(store.client(), args.run_ids, args.output, store.uri)
    except Exception as error:
        return report(error)
    print(table(runs))
    print(f"figure: {args.output}")
    return 0

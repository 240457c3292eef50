"""`scripts/run.py [-m] [CONFIG] [key=value ...]`: pick a primary config, hand the rest to Hydra.

Hydra treats every positional argument as an override, so `run.py -m sweep` would be a parse
error; a leading bare word naming a config in conf/ selects the primary config instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from study.errors import UserError, report
from study.paths import CONF_DIR, redact

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
            return None

    saved_argv = sys.argv
    sys.argv = [saved_argv[0], *hydra_argv]
    try:
        main(reported_task)()
        if user_errors:
            raise user_errors[0]
    except (HydraException, OmegaConfBaseException) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # UserError: one line; anything else: a masked traceback
        return report(error)
    finally:
        sys.argv = saved_argv
    return 0

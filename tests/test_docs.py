"""The docs: every link leads somewhere, README.md links every page, and the scheduler files
users copy (docs/schedulers/) parse and run the documented sweep command with its storage."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCHEDULERS = DOCS / "schedulers"
PAGES = sorted(DOCS.glob("*.md"))
SWEEP = ["scripts/run.py", "-m", "sweep"]
# What every host of one study must share (docs/many-machines.md, step 3).
SHARED = ("sweep.study_name", "sweep.n_trials", "sweep.storage", "tracking.uri")


def _links(page: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", page.read_text())


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file(page: Path) -> None:
    for link in _links(page):
        if link.startswith(("http://", "https://", "#")):
            continue
        assert (page.parent / link.split("#")[0]).exists(), f"{page.name}: {link}"


def test_the_readme_links_every_page_of_the_docs() -> None:
    linked = {link.split("#")[0] for link in _links(ROOT / "README.md")}
    assert {f"docs/{page.name}" for page in PAGES} <= linked


def _overrides_compose(overrides: list[str]) -> None:
    """The overrides name keys the sweep's config has (values stand in for the variables)."""
    filled = [re.sub(r"\$\(?\{?\w+\}?\)?", "x", o) for o in overrides]
    filled = [o.replace("sweep.n_trials=x", "sweep.n_trials=1") for o in filled]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        compose("sweep", overrides=[o for o in filled if not o.startswith("hydra.")])


def _sweep_overrides(command: list[str]) -> list[str]:
    """The overrides of a `python scripts/run.py -m sweep ...` command line."""
    at = next(i for i in range(len(command)) if command[i : i + 3] == SWEEP)
    assert Path(command[at - 1]).name == "python", command
    return command[at + 3 :]


def test_the_slurm_script_is_valid_bash_and_an_array_of_the_documented_sweep() -> None:
    script = SCHEDULERS / "study-sweep.sbatch"
    if shutil.which("bash"):
        checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
    text = script.read_text()
    options = dict(
        re.match(r"#SBATCH --([\w-]+)=(\S+)$", line).groups()  # type: ignore[union-attr]
        for line in text.splitlines()
        if line.startswith("#SBATCH")
    )
    assert re.fullmatch(r"0-\d+", options["array"]), options  # an array: one task per host
    command = shlex.split(re.sub(r"\\\n\s*", " ", text.split("\nexec ", 1)[1]))
    overrides = _sweep_overrides(command)
    assert {o.split("=")[0] for o in overrides} >= set(SHARED), overrides
    # Tasks on a shared disk: a sweep folder of each task's own.
    assert any("SLURM_ARRAY_TASK_ID" in o for o in overrides if o.startswith("hydra.sweep.dir="))
    _overrides_compose(overrides)


def _kubernetes() -> dict[str, Any]:
    documents = list(yaml.safe_load_all((SCHEDULERS / "study-sweep-job.yaml").read_text()))
    return {document["kind"]: document for document in documents}


def test_the_kubernetes_job_runs_pods_in_parallel_of_the_documented_sweep() -> None:
    kinds = _kubernetes()
    job, config = kinds["Job"], kinds["ConfigMap"]
    assert job["apiVersion"] == "batch/v1"
    assert job["spec"]["parallelism"] > 1
    [container] = job["spec"]["template"]["spec"]["containers"]
    overrides = _sweep_overrides(container["command"])
    assert {o.split("=")[0] for o in overrides} >= set(SHARED), overrides
    # The storage URLs come from the ConfigMap the pods read (Kubernetes expands $(NAME)).
    assert [ref["configMapRef"]["name"] for ref in container["envFrom"]] == [
        config["metadata"]["name"]
    ]
    for override in overrides:
        for name in re.findall(r"\$\((\w+)\)", override):
            assert name in config["data"], name
    storage = next(o for o in overrides if o.startswith("sweep.storage="))
    url = config["data"][re.findall(r"\$\((\w+)\)", storage)[0]]
    assert (
        url.startswith("postgresql://")
        and "@" in url
        and ":" not in url.split("//")[1].split("@")[0]
    )
    _overrides_compose(overrides)

"""study.paths: which tracking store a command uses and why; script paths as a user types them."""

from __future__ import annotations

from pathlib import Path

import pytest

from study.paths import DEFAULT_STORE, PROJECT_ROOT, TRACKING_ENV, choose_tracking_uri, script_path


def test_the_config_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRACKING_ENV, "http://env:5000")
    choice = choose_tracking_uri("http://config:5000")
    assert (choice.uri, choice.source) == ("http://config:5000", "tracking.uri")
    assert choice.describe() == "http://config:5000"


def test_the_environment_is_used_and_named_when_the_config_gives_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TRACKING_ENV, "postgresql://study:secret@db/mlflow")
    choice = choose_tracking_uri(None)
    assert choice.source == TRACKING_ENV
    assert choice.describe() == "postgresql://study:***@db/mlflow (from MLFLOW_TRACKING_URI)"


def test_without_either_the_default_store_is_used_and_said(tmp_path: Path) -> None:
    choice = choose_tracking_uri(None)
    assert choice.uri == f"sqlite:///{DEFAULT_STORE}"
    assert choice.describe().endswith("mlruns/mlflow.db (the default store)")


@pytest.mark.parametrize(
    ("cwd", "expected"),
    [
        (PROJECT_ROOT, "scripts/reproduce.py"),
        (PROJECT_ROOT / "src" / "study", "../../scripts/reproduce.py"),
        (Path("/").joinpath(*["deep"] * 30), str(PROJECT_ROOT / "scripts" / "reproduce.py")),
    ],
)
def test_script_path_is_relative_to_the_folder_unless_absolute_is_shorter(
    cwd: Path, expected: str
) -> None:
    assert script_path("reproduce", cwd) == expected


def test_script_path_works_from_the_folder_it_was_made_for(tmp_path: Path) -> None:
    for folder in (tmp_path, PROJECT_ROOT, PROJECT_ROOT / "conf" / "data"):
        typed = folder / script_path("run", folder)
        assert typed.resolve() == PROJECT_ROOT / "scripts" / "run.py"

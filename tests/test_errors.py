"""study.errors.report: what reaches the console, and the command's exit code."""

from __future__ import annotations

import errno

import pytest

from study.errors import UserError, report

FULL_DISK = OSError(errno.ENOSPC, "No space left on device")  # a write(2) names no file
READ_ONLY = PermissionError(errno.EACCES, "Permission denied", "/data/mlruns/artifacts/x.png")


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (UserError("data.path=x does not exist"), "error: data.path=x does not exist"),
        (FULL_DISK, "error: No space left on device"),
        (READ_ONLY, "error: /data/mlruns/artifacts/x.png: Permission denied"),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "/proc/nope"),
            "error: /proc/nope: No such file or directory",
        ),
    ],
)
def test_bad_input_and_an_unwritable_file_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], error: Exception, line: str
) -> None:
    assert report(error) == 2
    assert capsys.readouterr().err.splitlines() == [line]


def test_an_unexpected_error_shows_its_traceback_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    try:
        raise OSError(errno.EIO, "Input/output error")  # no file, not the machine's state
    except OSError as error:
        assert report(error) == 1
    assert "Traceback" in capsys.readouterr().err


def test_an_unexpected_errors_traceback_has_its_passwords_masked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    try:
        raise RuntimeError("could not connect to postgresql://study:hunter2@db:5432/optuna")
    except RuntimeError as error:
        assert report(error) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "hunter2" not in err
    assert "postgresql://study:***@db:5432/optuna" in err

"""study.paths: database URLs get the driver we install; passwords are masked in text and logs."""

from __future__ import annotations

import logging

import pytest

from study.paths import database_url
from study.secrets import mask_log_records, redact


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg2://u:p@h:5432/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("mysql://u@h/db", "mysql://u@h/db"),
        ("/tmp/study.journal", "/tmp/study.journal"),
    ],
)
def test_database_url_names_psycopg2_for_a_bare_postgresql_scheme(url: str, expected: str) -> None:
    assert database_url(url) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            r"#0 : tracking.uri=postgresql\://root\:pw@127.0.0.1\:5432/x",  # as Hydra logs it
            r"#0 : tracking.uri=postgresql\://root\:***@127.0.0.1\:5432/x",
        ),
        (
            "'sweep.storage=mysql+pymysql://u:pw@h/db'",
            "'sweep.storage=mysql+pymysql://u:***@h/db'",
        ),
        ("postgresql://h/db?user=u&password=pw&x=1", "postgresql://h/db?user=u&password=***&x=1"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("http://127.0.0.1:5000/#/experiments/1", "http://127.0.0.1:5000/#/experiments/1"),
    ],
)
def test_redact_masks_passwords_in_every_form_they_take(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_log_records_are_masked_whatever_handler_formats_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mask_log_records()
    mask_log_records()  # idempotent
    log = logging.getLogger("study.test")
    with caplog.at_level(logging.INFO, "study.test"):
        log.info("connecting to %s", "postgresql://u:pw@h/db")
        try:
            raise RuntimeError("no server at postgresql://u:pw@h/db")
        except RuntimeError:
            log.exception("failed")
    assert "pw" not in caplog.text
    assert "connecting to postgresql://u:***@h/db" in caplog.text
    assert "RuntimeError: no server at postgresql://u:***@h/db" in caplog.text

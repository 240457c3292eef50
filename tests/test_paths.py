"""study.paths: database URLs get the driver we install."""

from __future__ import annotations

import pytest

from study.paths import database_url


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

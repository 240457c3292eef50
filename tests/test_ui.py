"""The UI's printed addresses."""

from __future__ import annotations

import socket

import pytest

from study.ui import browse_url


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "http://127.0.0.1:5000"),
        ("::1", "http://[::1]:5000"),
        ("0.0.0.0", f"http://{socket.gethostname()}:5000"),
        ("::", f"http://{socket.gethostname()}:5000"),
        ("10.1.2.3", "http://10.1.2.3:5000"),
    ],
)
def test_links_name_an_address_a_browser_can_open(host: str, expected: str) -> None:
    assert browse_url(host, 5000) == expected

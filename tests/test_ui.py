"""The UI's printed addresses."""

from __future__ import annotations

import ipaddress

import pytest

from study.ui import browse_url, this_machine


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "http://127.0.0.1:5000"),
        ("::1", "http://[::1]:5000"),
        ("0.0.0.0", f"http://{this_machine()}:5000"),
        ("::", f"http://{this_machine()}:5000"),
        ("10.1.2.3", "http://10.1.2.3:5000"),
    ],
)
def test_links_name_an_address_a_browser_can_open(host: str, expected: str) -> None:
    assert browse_url(host, 5000) == expected


def test_this_machine_is_an_address_others_can_reach() -> None:
    address = ipaddress.ip_address(this_machine())  # here there is a network
    assert not address.is_unspecified and not address.is_loopback

"""The UI's printed addresses, and the names its server answers a browser at."""

from __future__ import annotations

import ipaddress
import os

import pytest

from study.ui import (
    ALLOWED_HOSTS_ENV,
    ALLOWED_ORIGINS_ENV,
    allow_served_names,
    browse_url,
    this_machine,
)


@pytest.fixture(autouse=True)
def no_server_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Empty counts as unset; set through monkeypatch, what the tests write is undone after
    # them (delenv of an absent variable records nothing to undo, and the UI processes of
    # later tests would inherit the lists).
    monkeypatch.setenv(ALLOWED_HOSTS_ENV, "")
    monkeypatch.setenv(ALLOWED_ORIGINS_ENV, "")


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


def test_bound_to_every_interface_the_server_answers_this_machines_address() -> None:
    allow_served_names(5000)
    hosts = os.environ[ALLOWED_HOSTS_ENV].split(",")
    assert f"{this_machine()}:5000" in hosts
    assert "localhost" in hosts  # MLflow's defaults stay
    assert os.environ[ALLOWED_ORIGINS_ENV] == f"http://{this_machine()}:5000"


def test_the_hosts_a_user_allowed_name_the_links_and_the_origins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chosen = "mlflow-host,mlflow-host:5000,*.corp.example,10.0.0.7"
    monkeypatch.setenv(ALLOWED_HOSTS_ENV, chosen)
    assert browse_url("0.0.0.0", 5000) == "http://mlflow-host:5000"
    allow_served_names(5000)
    assert os.environ[ALLOWED_HOSTS_ENV] == chosen  # the user's list, as given
    origins = os.environ[ALLOWED_ORIGINS_ENV].split(",")
    assert origins == ["http://mlflow-host:5000", "http://10.0.0.7:5000"]


def test_origins_a_user_chose_are_left_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOWED_ORIGINS_ENV, "https://mlflow.example")
    allow_served_names(5000)
    assert os.environ[ALLOWED_ORIGINS_ENV] == "https://mlflow.example"

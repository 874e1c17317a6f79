"""Loopback ports for the tests' servers, on parallel workers."""

from __future__ import annotations

import socket

import pytest

from simulators.clients import free_port


@pytest.mark.parametrize("worker", [0, 1, 2])
def test_each_worker_takes_ports_of_its_own_residue(
    worker: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{worker}")
    ports = [free_port() for _ in range(20)]
    assert {port // 2 % 3 for port in ports} == {worker}


def test_the_parity_is_the_one_bind_hands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Linux hands bind() odd ports and connect() even ones: a server on an even port may
    be dialled from that very port by a client polling it before it listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        parity = s.getsockname()[1] % 2
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    for worker in (0, 1):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{worker}")
        assert {free_port() % 2 for _ in range(20)} == {parity}


def test_a_port_it_gives_can_be_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))

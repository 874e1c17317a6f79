"""deploy/systemd/aemon.service: systemd accepts it, its hardening rates <= 2.0, and the
daemon speaks the sd_notify protocol the unit relies on (Type=notify, WatchdogSec=)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import find_binary, free_port

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "aemon.service"
INSTALLED_AEMON = "/opt/aemon/.venv/bin/aemon"
MAX_EXPOSURE = 2.0


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_binary("systemd-analyze"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_unit_verifies(tmp_path: Path) -> None:
    # `systemd-analyze verify` fails when ExecStart's binary does not exist, and the unit
    # names where it is installed (/opt/aemon), not where this checkout is. A copy that runs
    # an executable present here checks everything else in the unit.
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_AEMON} " in text
    copy = tmp_path / "aemon.service"
    copy.write_text(text.replace(f"ExecStart={INSTALLED_AEMON} ", f"ExecStart={sys.executable} "))
    result = systemd_analyze("verify", str(copy))
    # verify exits 0 after a line it ignores ("Failed to parse ..., ignoring"): any output
    # at all is a problem in the unit.
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", result.stdout
    assert result.stderr.strip() == "", result.stderr


def test_unit_declares_the_service_contract() -> None:
    settings = dict(
        line.split("=", 1)
        for line in UNIT.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith(("#", ";"))
    )
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert settings["WatchdogSec"] == "30"
    assert settings["Restart"] == "on-failure"
    assert settings["DynamicUser"] == "yes"
    assert settings["StateDirectory"] == "aemon"
    assert settings["TimeoutStopSec"] == "20"
    assert settings["EnvironmentFile"] == "-/etc/aemon/aemon.env"
    assert settings["ExecStart"] == f"{INSTALLED_AEMON} run --config /etc/aemon/aemon.toml"
    assert "AEMON_STATE__DIR=/var/lib/aemon" in UNIT.read_text()


def test_security_exposure_at_most_2() -> None:
    result = systemd_analyze("security", "--offline=true", "--no-pager", str(UNIT))
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for aemon\.service: (\d+\.\d+)", output)
    assert match, output[-2000:]
    assert float(match.group(1)) <= MAX_EXPOSURE, output[-2000:]


# -- sd_notify ------------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A unix datagram socket standing in for systemd's notify socket."""
    path = str(tmp_path / "notify.sock")
    assert len(path) < 100, "AF_UNIX paths are limited to 108 bytes"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()


def receive_until(sock: socket.socket, wanted: str, deadline: float, seen: list[str]) -> None:
    """Reads datagrams into `seen` until one carries the line `wanted`, or fails at deadline."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {wanted} before the deadline; received {seen}")
        sock.settimeout(remaining)
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            continue
        seen.append(message)
        if wanted in message.splitlines():
            return


def get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_daemon_notifies_ready_watchdog_and_stopping(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    http_port = free_port()
    closed_port = free_port()  # nothing listens: the broker is "down"
    config = tmp_path / "aemon.toml"
    config.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = {closed_port}\nreconnect_max = 2.0\n'
        f'[http]\nhost = "127.0.0.1"\nport = {http_port}\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n'
        '[log]\nformat = "json"\n'
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("AEMON_") and k != "NOTIFY_SOCKET"
    }
    env.update(NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000", PYTHONUNBUFFERED="1")
    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "service", "run", "--config", str(config)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    seen: list[str] = []
    try:
        # Importing torch can take a while on a cold cache.
        receive_until(sock, "READY=1", time.monotonic() + 90, seen)
        # WATCHDOG_USEC=1 s: a ping every 0.5 s while healthy.
        receive_until(sock, "WATCHDOG=1", time.monotonic() + 10, seen)
        assert daemon.poll() is None

        status, health = get(f"http://127.0.0.1:{http_port}/healthz")
        assert status == 200, health
        assert health["healthy"] is True
        status, ready = get(f"http://127.0.0.1:{http_port}/readyz")
        assert status == 503, ready  # healthy but, without a broker, not ready
        assert ready["broker_connected"] is False

        os.kill(daemon.pid, signal.SIGTERM)
        receive_until(sock, "STOPPING=1", time.monotonic() + 20, seen)
        assert daemon.wait(timeout=20) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=10)
        log.close()
    assert seen.index(next(m for m in seen if "READY=1" in m.splitlines())) == 0, seen


def test_example_config_loads() -> None:
    from service.core.config import load_settings

    settings = load_settings(REPO / "deploy" / "aemon.example.toml")
    assert settings.state.dir == Path("/var/lib/aemon")

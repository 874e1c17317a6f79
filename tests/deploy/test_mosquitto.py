"""deploy/mosquitto/mosquitto.conf: a real Mosquitto starts on it (listener and paths moved to
a free loopback port and a temporary directory), passes messages, and persists to disk."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    Publisher,
    Subscriber,
    find_binary,
    free_port,
    port_open,
    running,
    wait_until,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto" / "mosquitto.conf"


def settings() -> dict[str, str]:
    """Active (uncommented) settings; repeated keys keep the last value."""
    out = {}
    for line in EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            out[key] = value
    return out


def test_queues_are_raised_and_auth_is_documented() -> None:
    s = settings()
    assert s["persistence"] == "true"
    assert int(s["max_queued_messages"]) > 1000  # Mosquitto's default drops silently past it
    assert s["queue_qos0_messages"] == "true"
    text = EXAMPLE.read_text()
    assert re.search(r"^#password_file ", text, re.M)
    assert re.search(r"^#acl_file ", text, re.M)
    assert re.search(r"^listener 1883$", text, re.M)


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Mosquitto started as root drops to the `mosquitto` user, which must be able to reach
    # and write its persistence directory: pytest's tmp_path (under a 0700 root directory)
    # is out of its reach.
    with tempfile.TemporaryDirectory(prefix="aemon-mosquitto-") as name:
        os.chmod(name, 0o777)
        yield Path(name)


def test_broker_starts_on_the_example_and_persists(workdir: Path) -> None:
    port = free_port()
    text = EXAMPLE.read_text()
    text = re.sub(r"^listener 1883$", f"listener {port} 127.0.0.1", text, flags=re.M)
    text = re.sub(
        r"^persistence_location .*$", f"persistence_location {workdir}/", text, flags=re.M
    )
    text = re.sub(r"^log_dest syslog$", "log_dest stdout", text, flags=re.M)
    config = workdir / "mosquitto.conf"
    config.write_text(text)
    log_path = workdir / "mosquitto.log"
    with log_path.open("wb") as log:
        broker = subprocess.Popen(
            [find_binary("mosquitto"), "-c", str(config)], stdout=log, stderr=log
        )
    try:
        wait_until(lambda: broker.poll() is not None or port_open(port), 10, "mosquitto to listen")
        assert broker.poll() is None, log_path.read_text()
        sub = Subscriber(port, ["plant/#"])
        pub = Publisher(port)
        with running(pub, sub):
            pub.send("plant/pump-7/pressure", "3.21")
            pub.flush(10)
            wait_until(lambda: sub.on("plant/pump-7/pressure"), 10, "the message")
    finally:
        if broker.poll() is None:
            os.kill(broker.pid, signal.SIGTERM)
        code = broker.wait(10)
    assert code == 0, log_path.read_text()
    # persistence true: the database is written at shutdown.
    assert (workdir / "mosquitto.db").is_file(), log_path.read_text()

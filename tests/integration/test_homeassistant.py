"""Home Assistant discovery against the daemon process and a real Mosquitto: a machine's
three entities are announced retained under `homeassistant/`, its state document follows
it, and forgetting the machine removes them from the broker."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import orjson
import pytest

from tests.support import FAST_CONFIG, Daemon, Mosquitto, Publisher, Subscriber, wait_until

pytestmark = pytest.mark.integration

MACHINE = "pump-9"
STATE = f"aemon/machines/{MACHINE}"
_probes = itertools.count()


def retained(port: int) -> dict[str, bytes]:
    """What the broker holds retained for Home Assistant and the machine's state, as a
    new subscriber sees it: the retained messages come before a probe published after the
    subscription (an empty retained payload is a deletion, never delivered)."""
    probe = f"probe/{next(_probes)}"
    sub = Subscriber(port, ["homeassistant/#", STATE, probe])
    try:
        with_publisher(port, probe)
        wait_until(lambda: sub.on(probe), 10, "the probe")
        with sub.lock:
            return {t: p for t, p, kept in sub.messages if kept}
    finally:
        sub.close()


def with_publisher(port: int, topic: str, payload: bytes | dict[str, object] = b"1") -> None:
    pub = Publisher(port)
    try:
        pub.send(topic, payload)
    finally:
        pub.close()


def test_a_machine_appears_in_home_assistant_and_leaves_when_forgotten(
    tmp_path: Path, broker: Mosquitto
) -> None:
    workdir = tmp_path / "daemon"
    workdir.mkdir()
    config = {**FAST_CONFIG, "homeassistant": {"enabled": True}}
    daemon = Daemon(workdir, broker.port, config).start()
    try:
        pub = Publisher(broker.port)
        start = time.time() - 600
        for i in range(30):  # past discovery's 5 s: the machine learns
            values = {"current": 10.0 + i % 3, "pressure": 2.0 + 0.1 * (i % 2)}
            pub.send(f"plant/{MACHINE}", {"ts": start + i, "values": values})
        pub.close()
        held = wait_until(
            lambda: (r := retained(broker.port)) and len(r) == 4 and r, 30, "4 retained"
        )
        configs = {t: orjson.loads(p) for t, p in held.items() if t.startswith("homeassistant/")}
        assert sorted(t.split("/")[1] for t in configs) == ["binary_sensor", "sensor", "sensor"]
        assert {c["state_topic"] for c in configs.values()} == {STATE}
        assert {c["availability_topic"] for c in configs.values()} == {"aemon/status"}
        assert orjson.loads(held[STATE])["state"] == "learning"

        with_publisher(broker.port, f"aemon/command/{MACHINE}", {"command": "forget"})
        wait_until(lambda: MACHINE not in daemon.machines(), 15, "the machine forgotten")
        wait_until(lambda: retained(broker.port) == {}, 15, "nothing retained")
    finally:
        daemon.stop()

"""Replicas sharing a plant through NATS JetStream (`input.kind = "nats"`), against a real
nats-server, Mosquitto and three daemons: the plant publishes to NATS's MQTT listener, each
machine is scored by exactly one replica, and a replica killed with SIGKILL mid-stream
gives its machines to the others, which score them from their shared models, raise a
fault's alert on them, and lose no reading."""

from __future__ import annotations

import asyncio
import math
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import orjson
import paho.mqtt.client as paho
import pytest

from tests.support import (
    Daemon,
    Mosquitto,
    NatsServer,
    Publisher,
    Subscriber,
    running,
    wait_until,
)

pytestmark = pytest.mark.integration

MACHINES = [f"m{i:03d}" for i in range(300)]
PARTITIONS = 6
# Small and quick to learn: 300 machines fit on two cores within the test.
SCALE_CONFIG: dict[str, dict[str, Any]] = {
    "window": {"length": 5, "stride": 1, "max_stale": 5.0, "lateness": 2.0},
    "learning": {"windows": 30},
    "discovery": {"period": 2.0},
    "model": {"kind": "dense", "epochs": 8},
    "alert": {"k": 3, "n": 5, "m": 10},
    "ingest": {"max_payload_bytes": 4096},
}
HISTORY = 45  # seconds of readings each machine has before the live stream


def reading(machine: str, ts: float, fault: bool = False) -> dict[str, Any]:
    phase = (hash(machine) % 7) + ts / 10
    noise = random.Random(f"{machine}{ts}").gauss(0, 0.05)
    level = 8.0 if fault else 0.0
    return {"ts": ts, "values": {"a": math.sin(phase) + noise, "b": math.cos(phase) + level}}


class Plant:
    """Every machine once a second (with `ts` = now), and one machine faulty on demand."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.sent = 0
        self.faulty: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def backfill(self, until: float) -> None:
        for ts in range(int(until) - HISTORY, int(until)):
            self._send_all(float(ts))

    def _send_all(self, ts: float) -> None:
        for machine in MACHINES:
            doc = reading(machine, ts, fault=machine in self.faulty)
            self.publisher.send(f"plant/{machine}", doc)
            self.sent += 1

    def _run(self) -> None:
        next_at = math.floor(time.time()) + 1.0
        while not self._stop.wait(max(0.0, next_at - time.time())):
            self._send_all(next_at)
            next_at += 1.0

    def start(self) -> Plant:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.publisher.flush()


def events(alerts: Subscriber, machine: str, kind: str) -> list[dict[str, Any]]:
    return [a for a in alerts.json_on(f"aemon/alerts/{machine}") if a["event"] == kind]


def stream_state(url: str, stream: str) -> dict[str, Any]:
    async def ask() -> dict[str, Any]:
        nc = await nats.connect(url)
        try:
            reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)
        finally:
            await nc.close()
        state: dict[str, Any] = orjson.loads(reply.data)["state"]
        return state

    return asyncio.run(ask())


def owners(replicas: list[Daemon]) -> dict[str, list[int]]:
    """Machine -> the replicas that have it."""
    found: dict[str, list[int]] = {}
    for i, replica in enumerate(replicas):
        for machine in replica.machines():
            found.setdefault(machine, []).append(i)
    return found


def scoring(replicas: list[Daemon], machines: list[str]) -> bool:
    states = {}
    for replica in replicas:
        states.update({m: r["state"] for m, r in replica.machines().items()})
    return all(states.get(m) == "scoring" for m in machines)


@pytest.fixture
def plant_stack(tmp_path: Path) -> Iterator[tuple[NatsServer, Mosquitto, list[Daemon]]]:
    (tmp_path / "nats").mkdir()
    (tmp_path / "mqtt").mkdir()
    server = NatsServer(tmp_path / "nats", mqtt=True).start()
    broker = Mosquitto(tmp_path / "mqtt").start()
    replicas = []
    for i in range(3):
        workdir = tmp_path / f"aemon-{i}"
        workdir.mkdir()
        config = {
            **SCALE_CONFIG,
            "input": {"kind": "nats"},
            "nats": {
                "servers": [server.url],
                "partitions": PARTITIONS,
                "replica": i,
                "replicas": 3,
                "pin_timeout": 6.0,
                "ack_wait": 4.0,
            },
        }
        replicas.append(Daemon(workdir, broker.port, config))
    with running(server, broker, *replicas):
        for replica in replicas:
            replica.start(ready=False)
        for replica in replicas:
            replica.wait_started()
        yield server, broker, replicas


@pytest.mark.long
def test_replicas_share_the_plant_and_take_over_a_killed_one(
    plant_stack: tuple[NatsServer, Mosquitto, list[Daemon]],
) -> None:
    server, broker, replicas = plant_stack
    assert server.mqtt_port is not None
    alerts = Subscriber(broker.port, "aemon/alerts/#")
    plant = Plant(Publisher(server.mqtt_port, protocol=paho.MQTTv311))
    with running(alerts):
        plant.backfill(time.time())
        plant.start()
        try:
            wait_until(lambda: scoring(replicas, MACHINES), 240, "every machine scoring")
            shared = owners(replicas)
            assert sorted(shared) == MACHINES
            assert all(len(who) == 1 for who in shared.values()), "a machine on two replicas"
            assert len({who[0] for who in shared.values()}) == 3, "a replica without work"

            victim = replicas[2]
            moved = {m: r["model_version"] for m, r in victim.machines().items()}
            assert moved
            assert all(v is not None for v in moved.values())
            # A fault that fires at the victim and goes on after it died.
            burning = sorted(moved)[1]
            plant.faulty.add(burning)
            first = wait_until(lambda: events(alerts, burning, "raised"), 60, "the alert")[0]
            victim.stop(signal.SIGKILL)
            survivors = replicas[:2]
            # Taken over within 30 s (a pin timeout of 6 s here, then the models' fetch).
            wait_until(lambda: scoring(survivors, list(moved)), 30, "the moved machines scoring")
            taken = owners(survivors)
            assert all(len(taken[m]) == 1 for m in moved), "a moved machine on two replicas"

            # Its alert came along: the same episode goes on, and ends, at the new owner.
            plant.faulty.discard(burning)
            ended = wait_until(lambda: events(alerts, burning, "resolved"), 60, "resolved")
            assert ended[0]["alert_id"] == first["alert_id"]
            assert len(events(alerts, burning, "raised")) == 1, "the fault raised twice"

            faulty = sorted(moved)[0]
            plant.faulty.add(faulty)
            raised = wait_until(lambda: events(alerts, faulty, "raised"), 60, "the alert")
            # Its model came along: scored by the version it had, not learnt again.
            assert raised[0]["model_version"] == moved[faulty]
        finally:
            plant.stop()

    # Every reading was acknowledged after its readings were taken in (a work queue keeps
    # what is not), and none that the killed replica held was rejected as late: they came
    # again before the newer ones, accepted or counted duplicate.
    wait_until(
        lambda: stream_state(server.url, "PLANT_BY_MACHINE")["messages"] == 0,
        60,
        "every reading acknowledged",
    )
    for replica in survivors:
        text = replica.metrics(["aemon_readings_rejected_total"])
        late = [line for line in text.splitlines() if 'reason="late"' in line]
        assert all(line.endswith(" 0.0") for line in late), late
    assert plant.sent > len(MACHINES) * HISTORY
    assert Counter(len(w) for w in owners(survivors).values()) == Counter({1: len(MACHINES)})


def test_an_mqtt_plant_comes_in_through_a_mosquitto_bridge(tmp_path: Path) -> None:
    """The plant's Mosquitto bridges `plant/#` to NATS's MQTT listener (MQTT 3.1.1, QoS 1):
    one replica consumes every reading from JetStream, and its alerts go to Mosquitto."""
    (tmp_path / "nats").mkdir()
    (tmp_path / "mqtt").mkdir()
    (tmp_path / "aemon").mkdir()
    server = NatsServer(tmp_path / "nats", mqtt=True).start()
    assert server.mqtt_port is not None
    bridge = "\n".join(
        [
            "connection nats",
            f"address 127.0.0.1:{server.mqtt_port}",
            "bridge_protocol_version mqttv311",
            # NATS takes no bridge flag in CONNECT, nor Mosquitto's notification topics.
            "try_private false",
            "notifications false",
            "remote_clientid plant-bridge",
            "topic plant/# out 1",
        ]
    )
    broker = Mosquitto(tmp_path / "mqtt", extra_config=bridge)
    config = {**SCALE_CONFIG, "input": {"kind": "nats"}, "nats": {"servers": [server.url]}}
    daemon = Daemon(tmp_path / "aemon", broker.port, config)
    with running(server, broker.start(), daemon):
        daemon.start()
        publisher = Publisher(broker.port)
        start = int(time.time()) - HISTORY
        with running(publisher):
            for ts in range(start, start + HISTORY):
                publisher.send("plant/press-1", reading("press-1", float(ts)))
            publisher.flush()
        wait_until(
            lambda: (
                daemon.metric("aemon_readings_accepted_total", machine="press-1") == 2 * HISTORY
            ),
            60,
            "every bridged reading accepted",
        )
        assert daemon.machines()["press-1"]["state"] in ("learning", "scoring")


def test_what_a_killed_replica_held_comes_first_at_its_successor(tmp_path: Path) -> None:
    """Replica 1 takes its partition's messages and never processes them (a stalled
    pipeline keeps them unacknowledged, in progress); killed, it leaves them to NATS, which
    delivers them again only after their ack wait, behind the readings published since.
    Replica 0 takes the partition over, holds what it is given until they came, and takes
    every reading in, in order: none late, none lost."""
    (tmp_path / "nats").mkdir()
    (tmp_path / "mqtt").mkdir()
    server = NatsServer(tmp_path / "nats").start()
    broker = Mosquitto(tmp_path / "mqtt").start()
    replicas = []
    for i in range(2):
        (tmp_path / f"aemon-{i}").mkdir()
        nats_config = {
            "servers": [server.url],
            "partitions": 2,
            "replica": i,
            "replicas": 2,
            "pin_timeout": 4.0,
            "ack_wait": 3.0,
        }
        config = {**SCALE_CONFIG, "input": {"kind": "nats"}, "nats": nats_config}
        replicas.append(Daemon(tmp_path / f"aemon-{i}", broker.port, config))
    machines = [f"m{i:03d}" for i in range(20)]
    with running(server, broker, *replicas):
        replicas[0].start()
        replicas[1].start(env={"AEMON_TEST_FAULT": "stall"})
        start = int(time.time()) - 100

        def publish(seconds: range) -> None:
            async def send() -> None:
                nc = await nats.connect(server.url)
                for ts in seconds:
                    for machine in machines:
                        await nc.publish(f"plant.{machine}", orjson.dumps(reading(machine, ts)))
                await nc.flush()
                await nc.close()

            asyncio.run(send())

        publish(range(start, start + 20))
        wait_until(
            lambda: replicas[1].metric("aemon_partitions_owned") == 1,
            30,
            "the stalled replica holding its partition",
        )

        def settled() -> bool:
            """Replica 0 took all of its machines' readings in; the rest wait, unacked."""
            mine = replicas[0].machines()
            done = all(
                replicas[0].metric("aemon_readings_accepted_total", machine=m) == 2 * 20
                for m in mine
            )
            left = stream_state(server.url, "PLANT_BY_MACHINE")["messages"]
            return done and left == 20 * (len(machines) - len(mine))

        wait_until(settled, 30, "replica 0 done with its own machines")
        assert len(replicas[0].machines()) < len(machines), "no machine fell to replica 1"
        replicas[1].stop(signal.SIGKILL)
        publish(range(start + 20, start + 40))  # newer than what the dead one held
        wait_until(
            lambda: all(
                replicas[0].metric("aemon_readings_accepted_total", machine=m) == 2 * 40
                for m in machines
            ),
            60,
            "every reading taken in at replica 0",
        )
        text = replicas[0].metrics(["aemon_readings_rejected_total"])
        late = [line for line in text.splitlines() if 'reason="late"' in line]
        assert all(line.endswith(" 0.0") for line in late), late
        assert replicas[0].metric("aemon_nats_redeliveries_total") > 0

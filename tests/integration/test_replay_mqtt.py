"""Replay and the plant CLI through a real Mosquitto of this test's own, on a free loopback
port, stopped by its PID. Waits poll a condition with a deadline."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators.plant import Plant, default_machines, parse_fault, run
from simulators.publish import MqttSink
from simulators.replay import read_csv, replay

pytestmark = pytest.mark.integration

VALVE = Path(__file__).parent.parent / "data" / "skab" / "valve1" / "0.csv"


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[int]:
    """A broker of this test's own; yields its port."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise RuntimeError("mosquitto is not installed: run `make install`")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    # A fast publisher must not lose messages to the broker's per-client queue limits.
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        "max_queued_messages 0\nmax_inflight_messages 0\n"
    )
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)
    try:
        wait_until(lambda: accepts(port) or proc.poll() is not None, 10, "mosquitto to listen")
        assert proc.poll() is None, (tmp_path / "mosquitto.log").read_text()
        yield port
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


class Subscriber:
    """Collects (topic, payload) of every message on `topics`."""

    def __init__(self, port: int, topics: list[str]) -> None:
        self.messages: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(self.subscribed.is_set, 10, "the subscription")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, orjson.loads(msg.payload)))

    def on(self, topic: str) -> list[Any]:
        with self.lock:
            return [p for t, p in self.messages if t == topic]

    def count(self, prefix: str) -> int:
        with self.lock:
            return sum(t.startswith(prefix) for t, _ in self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_replayed_messages_arrive_with_the_files_timestamps(mosquitto: int) -> None:
    rows = read_csv(VALVE)
    sub = Subscriber(mosquitto, ["plant/#", "sim/truth/#"])
    try:
        sink = MqttSink("127.0.0.1", mosquitto, "replay-test")
        replay(rows, "valve1-0", sink, speed=0, qos=1)
        sink.close()
        wait_until(lambda: len(sub.on("plant/valve1-0")) == len(rows), 20, "every row")
        wait_until(lambda: len(sub.on("sim/truth/valve1-0")) == 2, 5, "the truth")
        received = sub.on("plant/valve1-0")
        assert [p["ts"] for p in received] == [r.ts for r in rows]
        assert [p["values"] for p in received] == [r.values for r in rows]
        assert received[0]["ts"] == 1583748873.0  # 2020-03-09 10:14:33, read as UTC
        states = [p["state"] for p in sub.on("sim/truth/valve1-0")]
        assert states == ["start", "end"]
    finally:
        sub.close()


def test_the_plant_cli_publishes_the_pure_stream(mosquitto: int) -> None:
    fault = "pump-1:cavitation:10:10"
    sub = Subscriber(mosquitto, ["plant/#", "sim/truth/#"])
    try:
        argv = [
            "--port",
            str(mosquitto),
            "--machines",
            "2",
            "--seed",
            "9",
            "--speed",
            "0",
            "--duration",
            "30",
            "--start",
            "1000",
            "--qos",
            "1",
            "--fault",
            fault,
            "--payload",
            "per-sensor",
        ]
        assert run(argv) == 0
        expected = list(
            Plant(default_machines(2), seed=9, faults=[parse_fault(fault)]).stream(1000.0, 30)
        )
        wait_until(lambda: sub.count("plant/") == len(expected), 20, "every reading")
        wait_until(lambda: len(sub.on("sim/truth/pump-1")) == 2, 5, "the truth")
        with sub.lock:
            got = sorted(
                (t, p["ts"], p["value"]) for t, p in sub.messages if t.startswith("plant/")
            )
        assert got == sorted((f"plant/{r.machine}/{r.sensor}", r.ts, r.value) for r in expected)
        assert sub.on("sim/truth/pump-1") == [
            {"machine": "pump-1", "fault": "cavitation", "state": "start", "ts": 1010.0},
            {"machine": "pump-1", "fault": "cavitation", "state": "end", "ts": 1020.0},
        ]
    finally:
        sub.close()

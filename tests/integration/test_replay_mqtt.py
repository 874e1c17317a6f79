"""Replay and the plant CLI through a real Mosquitto of this test's own (the `broker`
fixture: a free loopback port, stopped by its PID). Waits poll a condition with a deadline."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from simulators.plant import Plant, default_machines, parse_fault
from simulators.plant_cli import main as run
from simulators.publish import MqttSink
from simulators.replay import read_csv, replay
from tests.support import Mosquitto, Subscriber, wait_until

pytestmark = pytest.mark.integration

VALVE = Path(__file__).parent.parent / "data" / "skab" / "valve1" / "0.csv"


def test_replayed_messages_arrive_with_the_files_timestamps(broker: Mosquitto) -> None:
    rows = read_csv(VALVE)
    sub = Subscriber(broker.port, ["plant/#", "sim/truth/#"])
    try:
        sink = MqttSink("127.0.0.1", broker.port, "replay-test")
        replay(rows, "valve1-0", sink, speed=0, qos=1)
        sink.close()
        wait_until(lambda: len(sub.json_on("plant/valve1-0")) == len(rows), 20, "every row")
        wait_until(lambda: len(sub.json_on("sim/truth/valve1-0")) == 2, 5, "the truth")
        received = sub.json_on("plant/valve1-0")
        assert [p["ts"] for p in received] == [r.ts for r in rows]
        assert [p["values"] for p in received] == [r.values for r in rows]
        assert received[0]["ts"] == 1583748873.0  # 2020-03-09 10:14:33, read as UTC
        states = [p["state"] for p in sub.json_on("sim/truth/valve1-0")]
        assert states == ["start", "end"]
    finally:
        sub.close()


def test_the_plant_cli_publishes_the_pure_stream(broker: Mosquitto) -> None:
    fault = "pump-1:cavitation:10:10"
    sub = Subscriber(broker.port, ["plant/#", "sim/truth/#"])
    try:
        argv = [
            "--port",
            str(broker.port),
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
        wait_until(lambda: len(sub.json_under("plant/")) == len(expected), 20, "every reading")
        wait_until(lambda: len(sub.json_on("sim/truth/pump-1")) == 2, 5, "the truth")
        with sub.lock:
            plant = [(t, orjson.loads(p)) for t, p, _ in sub.messages if t.startswith("plant/")]
        got = sorted((t, p["ts"], p["value"]) for t, p in plant)
        assert got == sorted((f"plant/{r.machine}/{r.sensor}", r.ts, r.value) for r in expected)
        assert sub.json_on("sim/truth/pump-1") == [
            {"machine": "pump-1", "fault": "cavitation", "state": "start", "ts": 1010.0},
            {"machine": "pump-1", "fault": "cavitation", "state": "end", "ts": 1020.0},
        ]
    finally:
        sub.close()

"""Sparkplug B through a real Mosquitto and the daemon process, fed by the plant
simulator's edge node (simulators.sparkplug_edge): a device is learnt, scored and alerted
on; a gap in the node's seq brings exactly one rebirth request; a node's death and its
rebirth under a new bdSeq raise no alert."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from simulators.sparkplug_edge import SparkplugSink
from tests.support import FAST_CONFIG, Daemon, Mosquitto, Subscriber, running, wait_until
from tests.synthetic import SENSORS, Fault, machine_rows

pytestmark = pytest.mark.integration

MACHINE = "pump-7"
ALERT = f"aemon/alerts/{MACHINE}"
REBIRTHS = "spBv1.0/plant1/NCMD/edge"
STATE = "spBv1.0/STATE/aemon"
LEARN_SECONDS = 320  # 250 learning windows of 20 steps, plus discovery


def edge(port: int, bd_seq: int = 0) -> SparkplugSink:
    return SparkplugSink("127.0.0.1", port, "", "plant1", {MACHINE: tuple(SENSORS)}, bd_seq)


def send(sink: SparkplugSink, rows: Iterable[tuple[float, dict[str, float]]]) -> float:
    last = 0.0
    for ts, values in rows:
        sink.sample(MACHINE, ts, values, qos=1)
        last = ts
    sink.mqtt.flush()
    return last


def test_a_sparkplug_device_is_learnt_scored_alerted_and_survives_gaps_and_deaths(
    tmp_path: Path, broker: Mosquitto
) -> None:
    config = {
        **FAST_CONFIG,
        "sparkplug": {
            "enabled": True,
            "groups": ["plant1"],
            "machines": {"plant1/edge/pump-7": MACHINE},
        },
    }
    workdir = tmp_path / "daemon"
    workdir.mkdir()
    daemon = Daemon(workdir, broker.port, config).start()
    sub = Subscriber(broker.port, [ALERT, REBIRTHS, STATE])
    fault = Fault(LEARN_SECONDS + 120, LEARN_SECONDS + 180, "vibration", factor=3.0)
    rows = machine_rows(time.time() - 3000, LEARN_SECONDS + 900, seed=1, fault=fault)
    sink = edge(broker.port)
    with running(daemon, sub):
        send(sink, itertools.islice(rows, LEARN_SECONDS))
        wait_until(lambda: daemon.machines().get(MACHINE, {}).get("state") == "scoring", 60, "fit")
        assert daemon.machines()[MACHINE]["sensors"] == sorted(SENSORS)

        sink.edge.skip()  # a lost message
        send(sink, itertools.islice(rows, 60))
        wait_until(lambda: sub.on(REBIRTHS), 15, "a rebirth request")

        send(sink, itertools.islice(rows, 240))  # the fault, then normal operation
        firing = wait_until(
            lambda: [m for m in sub.json_on(ALERT) if m["state"] == "firing"], 30, "firing"
        )[0]
        assert firing["top_sensors"][0]["sensor"] == "vibration"
        wait_until(
            lambda: [m for m in sub.json_on(ALERT) if m["state"] == "resolved"], 30, "resolved"
        )

        sink.close()  # NDEATH: off, not stale
        wait_until(lambda: daemon.machines()[MACHINE]["state"] == "off", 15, "off")
        sink = edge(broker.port, bd_seq=1)  # born again under a new bdSeq
        last = send(sink, itertools.islice(rows, 200))
        wait_until(lambda: daemon.machines()[MACHINE]["scored_until"] >= last - 3, 30, "all scored")
        assert daemon.machines()[MACHINE]["state"] == "scoring"
        sink.close()
        assert len(sub.on(REBIRTHS)) == 1
        assert [m["event"] for m in sub.json_on(ALERT)].count("raised") == 1
        # aemon as the primary host: online while it runs, offline once it stopped.
        assert sub.json_on(STATE)[0]["online"] is True
        daemon.stop()
        assert wait_until(lambda: sub.json_on(STATE)[-1]["online"] is False, 15, "offline")

"""From MQTT readings to alerts on MQTT, through a real Mosquitto and the daemon process."""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Iterable, Iterator

from tests.support import Daemon, Mosquitto, Publisher, Subscriber, running, wait_until
from tests.synthetic import SENSORS, Fault, machine_rows

MACHINE = "pump-7"
ALERT_TOPIC = f"aemon/alerts/{MACHINE}"
LEARN_SECONDS = 320  # 250 learning windows of 20 steps, plus discovery


def send_rows(pub: Publisher, rows: Iterable[tuple[float, dict[str, float]]]) -> float:
    last = 0.0
    for ts, values in rows:
        pub.send(f"plant/{MACHINE}", {"ts": ts, "values": values})
        last = ts
    pub.flush()
    return last


def learn(daemon: Daemon, pub: Publisher, rows: Iterator[tuple[float, dict[str, float]]]) -> None:
    """Sends the stream's first rows as normal history until the daemon has fitted a model."""
    send_rows(pub, itertools.islice(rows, LEARN_SECONDS))
    wait_until(
        lambda: daemon.machines().get(MACHINE, {}).get("state") == "scoring", 60, "model fit"
    )


def scored_through(daemon: Daemon, ts: float) -> bool:
    scored = daemon.machines()[MACHINE]["scored_until"]
    return scored is not None and scored >= ts - 3


def test_fault_raises_then_resolves_alert(daemon: Daemon, broker: Mosquitto) -> None:
    sub = Subscriber(broker.port, [ALERT_TOPIC, "aemon/events"])
    pub = Publisher(broker.port)
    with running(pub, sub):
        fault = Fault(LEARN_SECONDS + 60, LEARN_SECONDS + 120, "vibration", factor=3.0)
        rows = machine_rows(time.time() - 2000, LEARN_SECONDS + 240, seed=1, fault=fault)
        learn(daemon, pub, rows)
        assert daemon.machines()[MACHINE]["sensors"] == sorted(SENSORS)
        last = send_rows(pub, rows)

        firing = wait_until(
            lambda: [m for m in sub.json_on(ALERT_TOPIC) if m["state"] == "firing"], 30, "firing"
        )[0]
        assert firing["top_sensors"][0]["sensor"] == "vibration"
        assert firing["machine"] == MACHINE
        assert firing["score"] > firing["threshold"]
        resolved = wait_until(
            lambda: [m for m in sub.json_on(ALERT_TOPIC) if m["state"] == "resolved"],
            30,
            "resolved",
        )[0]
        assert resolved["alert_id"] == firing["alert_id"]
        assert resolved["ended_at"] is not None
        assert scored_through(daemon, last) or wait_until(
            lambda: scored_through(daemon, last), 30, "all windows scored"
        )
        events = sub.json_on("aemon/events")
        assert [e["event"] for e in events][:1] == ["raised"]
        assert events[-1]["event"] == "resolved"


def test_normal_load_changes_raise_no_alert(daemon: Daemon, broker: Mosquitto) -> None:
    sub = Subscriber(broker.port, [ALERT_TOPIC])
    pub = Publisher(broker.port)
    with running(pub, sub):
        start = time.time() - 2000
        learn(daemon, pub, machine_rows(start, LEARN_SECONDS, seed=1))
        # Ten minutes of event time, the load changing every 90 s among learnt levels, in
        # another order than while learning.
        normal = machine_rows(
            start + LEARN_SECONDS,
            600,
            seed=3,
            loads=(1.0, 0.6, 0.8, 0.6),
            load_step=90,
            temperature0=70.0,
        )
        last = send_rows(pub, normal)
        wait_until(lambda: scored_through(daemon, last), 60, "all windows scored")
        assert daemon.metric("aemon_windows_scored_total", machine=MACHINE) >= 590
        assert sub.on(ALERT_TOPIC) == []
        assert daemon.metric("aemon_alerts_raised_total", machine=MACHINE) == 0


def test_restart_after_sigkill_resumes_the_saved_model(daemon: Daemon, broker: Mosquitto) -> None:
    pub = Publisher(broker.port)
    with running(pub):
        start = time.time() - 2000
        rows = machine_rows(start, LEARN_SECONDS + 60, seed=1)
        learn(daemon, pub, rows)
        before = daemon.machines()[MACHINE]
        daemon.stop(signal.SIGKILL)
        daemon.start()
        after = daemon.machines()[MACHINE]
        assert after["state"] == "scoring"
        assert (after["model_version"], after["threshold"]) == (
            before["model_version"],
            before["threshold"],
        )
        last = send_rows(pub, rows)
        wait_until(lambda: scored_through(daemon, last), 30, "scoring after the restart")
        assert daemon.metric("aemon_model_version", machine=MACHINE) == before["model_version"]

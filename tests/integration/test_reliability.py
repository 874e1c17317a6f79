"""Failures the daemon must survive or report: dead threads, a broker killed mid-stream."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from tests.support import (
    FAST_CONFIG,
    Daemon,
    Mosquitto,
    Publisher,
    Relay,
    Subscriber,
    running,
    wait_until,
)
from tests.synthetic import Fault, machine_rows


def health(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    status, body = daemon.get("/healthz")
    return status, orjson.loads(body)


def start_faulty(tmp_path: Path, broker: Mosquitto, fault: str) -> Daemon:
    workdir = tmp_path / "daemon"
    workdir.mkdir()
    return Daemon(workdir, broker.port, FAST_CONFIG).start(env={"AEMON_TEST_FAULT": fault})


def test_pipeline_exception_turns_healthz_red(tmp_path: Path, broker: Mosquitto) -> None:
    daemon = start_faulty(tmp_path, broker, "pipeline")
    pub = Publisher(broker.port)
    with running(daemon, pub):
        pub.send("plant/pump-7", {"values": {"a": 1.0}})
        pub.flush()
        _, report = wait_until(lambda: (r := health(daemon))[0] == 503 and r, 10, "/healthz 503")
        assert report["threads"]["pipeline"] is False
        assert report["threads"]["mqtt"] is True
        failed = wait_until(lambda: daemon.log_events("thread_failed"), 5, "thread_failed log")
        assert failed[0]["thread"] == "pipeline"
        assert "InjectedFaultError" in failed[0]["exception"]
        assert "Traceback" in failed[0]["exception"]
        assert daemon.metric("aemon_thread_failures_total", thread="pipeline") == 1
        assert daemon.get("/metrics")[0] == 200


def test_paho_thread_death_turns_healthz_red(tmp_path: Path, broker: Mosquitto) -> None:
    daemon = start_faulty(tmp_path, broker, "mqtt")
    pub = Publisher(broker.port)
    with running(daemon, pub):
        pub.send("plant/pump-7", {"values": {"a": 1.0}})
        pub.flush()
        _, report = wait_until(lambda: (r := health(daemon))[0] == 503 and r, 10, "/healthz 503")
        assert report["threads"]["mqtt"] is False
        assert report["threads"]["pipeline"] is True
        failed = wait_until(lambda: daemon.log_events("thread_failed"), 5, "thread_failed log")
        assert failed[0]["thread"] == "mqtt"
        # paho's thread ends with the exception: logged as one JSON event, not a bare traceback
        crashed = wait_until(lambda: daemon.log_events("thread_crashed"), 5, "thread_crashed log")
        assert crashed[0]["thread"].startswith("paho-mqtt-client-")
        assert "InjectedFaultError" in crashed[0]["exception"]
        assert all(line.startswith("{") for line in daemon.logs().splitlines())
        # Nobody asks /readyz here: the gauge a Prometheus rule watches must drop by itself.
        wait_until(lambda: daemon.metric("aemon_ready") == 0, 5, "aemon_ready 0 on /metrics")
        assert daemon.get("/readyz")[0] == 503


# -- broker SIGKILL mid-stream ------------------------------------------------------------
MACHINE = "pump-7"
ALERT_TOPIC = f"aemon/alerts/{MACHINE}"
LEARN_SECONDS = 320
FIGURES: dict[str, float] = {}


def send_rows(pub: Publisher, rows: Iterable[tuple[float, dict[str, float]]]) -> int:
    sent = 0
    for ts, values in rows:
        pub.send(f"plant/{MACHINE}", {"ts": ts, "values": values})
        sent += 1
    pub.flush()
    return sent


def machine(daemon: Daemon) -> dict[str, Any]:
    return daemon.machines().get(MACHINE, {})


def mosquitto(tmp_path: Path) -> Mosquitto:
    """A persistent broker; as root, Mosquitto would drop to its own user, which cannot
    write the test's directory."""
    extra = "autosave_interval 1\n" + ("user root" if os.geteuid() == 0 else "")
    return Mosquitto(tmp_path, extra, persistence=True)


def start_daemon(tmp_path: Path, port: int, **extra: dict[str, Any]) -> Daemon:
    workdir = tmp_path / "daemon"
    workdir.mkdir(exist_ok=True)
    config = {**FAST_CONFIG, "mqtt": {"reconnect_min": 0.5, "reconnect_max": 1.0}, **extra}
    return Daemon(workdir, port, config).start()


def test_broker_killed_mid_stream_alert_arrives_after_reconnect(tmp_path: Path) -> None:
    broker = mosquitto(tmp_path).start()
    relay = Relay(broker.port)
    daemon = start_daemon(tmp_path, relay.port)
    pub = Publisher(broker.port)
    with running(broker, relay, daemon, pub):
        fault = Fault(LEARN_SECONDS + 30, LEARN_SECONDS + 90, "vibration", factor=3.0)
        start = time.time() - 2000
        rows = machine_rows(start, LEARN_SECONDS + 200, seed=1, fault=fault)
        send_rows(pub, itertools.islice(rows, LEARN_SECONDS + 30))
        wait_until(lambda: machine(daemon).get("state") == "scoring", 60, "model fit")
        # From here on nothing the daemon sends reaches the broker: the alert it raises on
        # the fault readings is lost on the wire, and the broker is then killed.
        relay.hold()
        send_rows(pub, itertools.islice(rows, 60))
        wait_until(lambda: machine(daemon).get("alert") == "firing", 20, "firing")
        disconnects = len(daemon.log_events("mqtt_disconnected"))
        failures = len(daemon.log_events("mqtt_connect_failed"))
        broker.kill()
        killed_at = time.monotonic()
        wait_until(lambda: not daemon.ready(), 10, "the daemon to see the broker gone")
        # A few seconds down: the daemon has tried (and failed, with backoff) three times.
        # The relay takes each attempt and closes it at once: a connection closed before
        # the broker's CONNACK, logged as a failed attempt, not as a disconnection.
        wait_until(
            lambda: len(daemon.log_events("mqtt_connect_failed")) >= failures + 3, 20, "retries"
        )
        assert len(daemon.log_events("mqtt_disconnected")) == disconnects + 1
        assert len(daemon.log_events("mqtt_connect_failed")) < failures + 7  # no storm
        assert daemon.healthy()  # paho's one thread keeps reconnecting
        assert relay.dropped > 0
        relay.release()
        broker.start()
        restarted_at = time.monotonic()
        wait_until(daemon.ready, 20, "reconnect")
        FIGURES["reconnect_s"] = round(time.monotonic() - restarted_at, 2)
        FIGURES["outage_s"] = round(restarted_at - killed_at, 2)
        sub = Subscriber(broker.port, [ALERT_TOPIC])
        with running(sub):
            firing = wait_until(
                lambda: [m for m in sub.json_on(ALERT_TOPIC) if m["state"] == "firing"],
                20,
                "the alert raised while the broker was unreachable",
            )[0]
            assert firing["top_sensors"][0]["sensor"] == "vibration"
        # Resubscribed and scoring again: new readings are scored.
        pub2 = Publisher(broker.port)
        with running(pub2):
            send_rows(pub2, rows)
            last = start + LEARN_SECONDS + 199
            wait_until(
                lambda: (machine(daemon).get("scored_until") or 0) >= last - 3,
                30,
                "scoring after reconnect",
            )
        assert daemon.healthy()
        print("figures", FIGURES)


def test_acks_go_out_in_arrival_order_once_processed() -> None:
    from service.transport.acks import AckOrder

    sent: list[tuple[int, int]] = []
    acks = AckOrder(lambda mid, qos: sent.append((mid, qos)))
    first, second, third = (acks.track(mid, 1) for mid in (11, 12, 13))
    assert acks.track(0, 0) is not None  # QoS 0: nothing to acknowledge
    second()
    assert sent == []  # 11 is not processed yet
    first()
    assert sent == [(11, 1), (12, 1)]
    acks.reset()  # a new connection: the broker re-sends 13, this ack is stale
    third()
    assert sent == [(11, 1), (12, 1)]
    assert acks.pending == 0

"""Failures the daemon must survive or report: dead threads, a broker killed mid-stream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson

from tests.integration.conftest import FAST_CONFIG
from tests.support import Daemon, Mosquitto, Publisher, running, wait_until


def health(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    status, body = daemon.get("/healthz")
    return status, orjson.loads(body)


def log_events(daemon: Daemon, event: str) -> list[dict[str, Any]]:
    found = []
    for line in daemon.logs().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


def start_faulty(tmp_path: Path, broker: Mosquitto, fault: str) -> Daemon:
    workdir = tmp_path / "daemon"
    workdir.mkdir()
    return Daemon(workdir, broker.port, FAST_CONFIG).start(env={"AEMON_TEST_FAULT": fault})


def test_pipeline_exception_turns_healthz_red(tmp_path: Path, broker: Mosquitto) -> None:
    daemon = start_faulty(tmp_path, broker, "pipeline")
    pub = Publisher(broker.port)
    with running(daemon, pub):
        wait_until(daemon.ready, 10, "ready")
        pub.send("plant/pump-7", {"values": {"a": 1.0}})
        pub.flush()
        _, report = wait_until(lambda: (r := health(daemon))[0] == 503 and r, 10, "/healthz 503")
        assert report["threads"]["pipeline"] is False
        assert report["threads"]["mqtt"] is True
        failed = wait_until(lambda: log_events(daemon, "thread_failed"), 5, "thread_failed log")
        assert failed[0]["thread"] == "pipeline"
        assert "InjectedFaultError" in failed[0]["exception"]
        assert "Traceback" in failed[0]["exception"]
        assert daemon.metric("aemon_thread_failures_total", thread="pipeline") == 1
        assert daemon.get("/metrics")[0] == 200


def test_paho_thread_death_turns_healthz_red(tmp_path: Path, broker: Mosquitto) -> None:
    daemon = start_faulty(tmp_path, broker, "mqtt")
    pub = Publisher(broker.port)
    with running(daemon, pub):
        wait_until(daemon.ready, 10, "ready")
        pub.send("plant/pump-7", {"values": {"a": 1.0}})
        pub.flush()
        _, report = wait_until(lambda: (r := health(daemon))[0] == 503 and r, 10, "/healthz 503")
        assert report["threads"]["mqtt"] is False
        assert report["threads"]["pipeline"] is True
        failed = wait_until(lambda: log_events(daemon, "thread_failed"), 5, "thread_failed log")
        assert failed[0]["thread"] == "mqtt"
        assert daemon.get("/readyz")[0] == 503

"""Metric series stay bounded: a machine that is not accepted creates none, and the first
refusal at `ingest.max_machines` is logged and counted once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from service.app import App
from service.core.config import Settings
from service.core.metrics import REJECTED

NOW = 1_700_000_000.0
MAX_MACHINES = 3


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    settings = Settings(
        http={"host": "127.0.0.1", "port": 0},
        state={"dir": tmp_path},
        ingest={"max_machines": MAX_MACHINES},
    )
    app = App(settings, CollectorRegistry())
    yield app
    app.http.server.server_close()


def send(app: App, machine: str) -> None:
    payload = orjson.dumps({"ts": NOW - 1, "values": {"a": 1.0, "b": 2.0}})
    app.on_message(f"plant/{machine}", payload, NOW)


def labels(app: App) -> set[str]:
    return {
        s.labels["machine"]
        for metric in app.metrics.registry.collect()
        for s in metric.samples
        if "machine" in s.labels
    }


def value(app: App, name: str, **wanted: str) -> float:
    return app.metrics.registry.get_sample_value(name, wanted) or 0.0


def test_machines_past_the_limit_create_no_series_and_the_limit_is_reported_once(
    app: App,
) -> None:
    with capture_logs() as logs:
        for k in range(50):
            send(app, f"fake-{k}")
            app.pipeline.cycle(timeout=0)
    accepted = {f"fake-{k}" for k in range(MAX_MACHINES)}
    assert set(app.pipeline.machines) == accepted
    assert labels(app) == accepted | {REJECTED}
    refused = 2 * (50 - MAX_MACHINES)  # two values a message
    assert value(app, "aemon_readings_received_total", machine=REJECTED) == refused
    assert (
        value(app, "aemon_readings_rejected_total", machine=REJECTED, reason="unknown_topic")
        == refused
    )
    assert value(app, "aemon_machine_limit_reached_total") == 1
    reached = [e for e in logs if e["event"] == "machine_limit_reached"]
    assert [(e["limit"], e["refused"]) for e in reached] == [(MAX_MACHINES, "fake-3")]


def test_a_forgotten_machine_makes_room_and_the_next_refusal_is_reported_again(
    app: App,
) -> None:
    for k in range(MAX_MACHINES + 1):
        send(app, f"m-{k}")
        app.pipeline.cycle(timeout=0)
    app.pipeline.drop_machine("m-0")
    for k in range(MAX_MACHINES + 1, MAX_MACHINES + 3):
        send(app, f"m-{k}")
        app.pipeline.cycle(timeout=0)
    assert "m-4" in app.pipeline.machines
    assert "m-5" not in app.pipeline.machines
    assert value(app, "aemon_machine_limit_reached_total") == 2


def test_a_machine_cannot_take_the_label_of_the_rejected(app: App) -> None:
    send(app, REJECTED)
    app.pipeline.cycle(timeout=0)
    assert REJECTED not in app.pipeline.machines
    assert (
        value(app, "aemon_readings_rejected_total", machine=REJECTED, reason="unknown_topic") == 1
    )

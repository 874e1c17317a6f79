"""App.on_message while running and once shutdown has begun."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import orjson
import pytest
from prometheus_client import CollectorRegistry

from service.app import App
from service.core.config import Settings

NOW = 1_700_000_000.0
PAYLOAD = orjson.dumps({"ts": NOW - 1, "values": {"force": 1.0, "stroke": 2.0}})


@pytest.fixture
def app() -> Iterator[App]:
    app = App(
        Settings(
            http={"host": "127.0.0.1", "port": 0},
            machines={"press-1": {"sensors": ("force", "stroke")}},
        ),
        CollectorRegistry(),
    )
    yield app
    app.http.server.server_close()


def test_a_reading_is_acked_once_the_pipeline_took_it(app: App) -> None:
    acks: list[int] = []
    app.on_message("plant/press-1", PAYLOAD, NOW, lambda: acks.append(1))
    assert acks == []
    app.pipeline.cycle(timeout=0)
    assert acks == [1]
    assert app.metrics.registry.get_sample_value("aemon_messages_received_total") == 1


def test_after_stop_input_messages_are_left_for_the_broker_to_redeliver(app: App) -> None:
    acks: list[int] = []
    app.stop_input()
    app.on_message("plant/press-1", PAYLOAD, NOW, lambda: acks.append(1))
    app.pipeline.cycle(timeout=0)
    assert acks == []
    assert app.pipeline.queue.empty()
    assert app.metrics.registry.get_sample_value("aemon_messages_received_total") == 0


def test_a_sensor_silent_past_max_stale_is_counted_as_a_window_gap(app: App) -> None:
    start = NOW - 3600
    silent = range(40, 60)  # 20 s without readings, max_stale is 5 s
    for step in (s for s in range(100) if s not in silent):
        values = {"force": 1.0 + step % 3, "stroke": 2.0}
        app.on_message("plant/press-1", orjson.dumps({"ts": start + step, "values": values}), NOW)
    while not app.pipeline.queue.empty():
        app.pipeline.cycle(timeout=0)

    gaps = app.metrics.registry.get_sample_value("aemon_window_gaps_total", {"machine": "press-1"})
    assert gaps == 1


def test_long_lived_objects_are_frozen_once_after_start_up(app: App) -> None:
    app.pipeline.cycle(timeout=0)  # tests/conftest.py unfreezes after the test
    frozen = gc.get_freeze_count()
    assert frozen > 0
    app.on_message("plant/press-1", PAYLOAD, NOW)
    app.pipeline.cycle(timeout=0)
    # Nothing installed since: no new freeze (frozen objects may still be freed).
    assert gc.get_freeze_count() <= frozen

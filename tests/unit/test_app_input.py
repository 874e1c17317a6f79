"""App.on_message while running and once shutdown has begun."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from prometheus_client import CollectorRegistry

from service.app import App
from service.config import Settings

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

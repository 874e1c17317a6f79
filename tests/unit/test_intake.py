"""The pipeline's queue is bounded in readings as well as messages, and so is a cycle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from service.app import App
from service.core.config import Settings
from service.core.types import Reading, Row
from service.stream.arrivals import Batch
from service.stream.intake import Intake

NOW = 1_700_000_000.0


def rows(n: int, sensors: int = 4) -> Batch:
    """A batch of `n` records of `sensors` values each."""
    values = {f"s{k}": 1.0 for k in range(sensors)}
    return Batch(NOW, [], None, [Row(NOW + i, values) for i in range(n)], "m")


def one_reading() -> Batch:
    return Batch(NOW, [Reading("m", "s0", NOW, 1.0)])


def test_batches_are_refused_once_the_readings_budget_is_spent() -> None:
    intake = Intake(max_messages=100, max_readings=1000, cycle_messages=100, cycle_readings=10**6)
    assert intake.put(rows(100))  # 400 readings
    assert intake.put(rows(100))
    assert not intake.put(rows(100))  # 1,200 would pass the budget
    assert intake.full == "readings"
    assert intake.put(one_reading())  # what still fits is taken
    assert intake.readings == 801
    assert len(intake.take(timeout=0)) == 3
    assert intake.readings == 0
    assert intake.put(rows(100))


def test_messages_stay_bounded_too() -> None:
    intake = Intake(max_messages=2, max_readings=10**6, cycle_messages=100, cycle_readings=10**6)
    assert intake.put(one_reading())
    assert intake.put(one_reading())
    assert not intake.put(one_reading())
    assert intake.full == "messages"


def test_a_batch_larger_than_the_budget_is_taken_into_an_empty_queue() -> None:
    intake = Intake(max_messages=10, max_readings=100, cycle_messages=10, cycle_readings=100)
    assert intake.put(rows(50))  # 200 readings
    assert not intake.put(one_reading())


def test_a_cycle_takes_at_most_its_readings_past_the_first_message() -> None:
    intake = Intake(max_messages=100, max_readings=10**6, cycle_messages=100, cycle_readings=1000)
    for _ in range(10):
        assert intake.put(rows(100))  # 400 readings each
    sizes = []
    while batches := intake.take(timeout=0):
        sizes.append(len(batches))
    assert sizes == [3, 3, 3, 1]  # 1,200 readings a cycle: the message that crosses 1,000 ends it


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    settings = Settings(
        http={"host": "127.0.0.1", "port": 0},
        state={"dir": tmp_path},
        ingest={"max_queued_readings": 1000},
        machines={"press-1": {"sensors": ("force", "stroke")}},
    )
    app = App(settings, CollectorRegistry())
    yield app
    app.http.server.server_close()


def test_readings_past_the_budget_are_counted_overloaded_and_acked(app: App) -> None:
    acks: list[int] = []
    for k in range(4):
        records = [
            {"ts": NOW - 1000 + 200 * k + i, "values": {"force": 1.0, "stroke": 2.0}}
            for i in range(200)
        ]
        # 400 readings a message: the third and fourth find 800 queued, over the budget.
        app.on_message("plant/press-1", orjson.dumps(records), NOW, lambda: acks.append(1))
    assert len(acks) == 2  # the refused ones are acked at once
    app.pipeline.cycle(timeout=0)
    assert len(acks) == 4
    sample = app.metrics.registry.get_sample_value
    press = {"machine": "press-1"}
    assert sample("aemon_readings_rejected_total", {**press, "reason": "overloaded"}) == 800
    assert sample("aemon_readings_accepted_total", press) == 800
    assert sample("aemon_readings_received_total", press) == 1600

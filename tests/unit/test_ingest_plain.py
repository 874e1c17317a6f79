"""Plain records skip pydantic and must come out as if pydantic had read them.

`Ingestor` reads the common shapes (`{"ts": <number>, "value": ...}`, `{"ts": ...,
"values": {...}}`) without pydantic, which costs more than the rest of a message's parsing.
Every record, plain or not, must give the same readings and the same rejections (reason
and detail) as the pydantic path gives it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.stream import ingest
from service.stream.ingest import Ingestor, IngestResult

NOW = 1_750_000_000.0
INGESTOR = Ingestor(
    ("plant/{machine}/{sensor}", "plant/{machine}"),
    max_payload_bytes=1 << 16,
    declared={"press-1": ("force", "stroke")},
)

numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([NOW, NOW - 0.5, NOW + 1e6, 0, 2**63, -(2**63), 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
)
anything = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=3), st.just([1]))
ts_values = st.one_of(numbers, st.none(), st.just("2026-11-23T07:15:47Z"), st.just("12"))
sensors = st.sampled_from(["force", "stroke", "temp"])


def record(field: str, value: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {field: value},
        optional={"ts": ts_values, "extra": anything},
    )


sensor_records = st.one_of(record("value", anything), numbers, st.just({"ts": NOW}))
machine_records = st.one_of(
    record("values", st.dictionaries(sensors, anything, max_size=3)),
    record("values", anything),
)


def parse_both(topic: str, document: Any) -> tuple[IngestResult, IngestResult]:
    # The stdlib writes what orjson will not (NaN, integers past 64 bits), as senders may.
    payload = json.dumps(document).encode()
    fast = INGESTOR.parse(topic, payload, NOW)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest, "_plain", lambda record, field: False)
        slow = INGESTOR.parse(topic, payload, NOW)
    return fast, slow


def assert_same(fast: IngestResult, slow: IngestResult) -> None:
    assert fast.readings == slow.readings
    assert [(r.reason, r.detail, r.machine) for r in fast.rejections] == [
        (r.reason, r.detail, r.machine) for r in slow.rejections
    ]


@settings(max_examples=400, derandomize=True, database=None, deadline=None)
@given(st.one_of(sensor_records, st.lists(sensor_records, max_size=3)), sensors)
def test_sensor_records_read_alike(document: Any, sensor: str) -> None:
    assert_same(*parse_both(f"plant/press-1/{sensor}", document))


@settings(max_examples=400, derandomize=True, database=None, deadline=None)
@given(st.one_of(machine_records, st.lists(machine_records, max_size=3)))
def test_machine_records_read_alike(document: Any) -> None:
    assert_same(*parse_both("plant/press-1", document))


def test_the_plain_path_is_taken() -> None:
    """Guards the speed-up itself: the common shapes never reach pydantic."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest.MachineRecord, "model_validate", _refuse)
        patch.setattr(ingest.SensorRecord, "model_validate", _refuse)
        one = INGESTOR.parse("plant/press-1/force", b'{"ts": 1750000000, "value": 2.5}', NOW)
        rows = b'[{"ts": 1750000000.5, "values": {"force": 1, "stroke": 2.0}}, {"values": {}}]'
        many = INGESTOR.parse("plant/press-1", rows, NOW)
    assert [(r.sensor, r.ts, r.value) for r in one.readings] == [("force", NOW, 2.5)]
    assert [(r.sensor, r.ts) for r in many.readings] == [
        ("force", NOW + 0.5),
        ("stroke", NOW + 0.5),
    ]
    assert not one.rejections
    assert not many.rejections


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("pydantic was asked")

from __future__ import annotations

import pytest

from service.core.types import RejectReason
from service.stream.ingest import Ingestor, TopicTemplate

NOW = 1_700_000_000.0


@pytest.fixture
def ingestor() -> Ingestor:
    return Ingestor(
        ("plant/{machine}/{sensor}", "plant/{machine}"),
        max_payload_bytes=256,
        future_tolerance=60,
        declared={"press-1": ("force", "stroke")},
    )


def reasons(ingestor: Ingestor, topic: str, payload: bytes) -> list[str]:
    return [r.reason.value for r in ingestor.parse(topic, payload, NOW).rejections]


def test_templates_become_wildcard_subscriptions(ingestor: Ingestor) -> None:
    assert ingestor.subscriptions == ["plant/+", "plant/+/+"]
    assert TopicTemplate.compile("site/a/{machine}/data").subscription == "site/a/+/data"


def test_per_machine_record_and_batch(ingestor: Ingestor) -> None:
    one = ingestor.parse("plant/pump-7", b'{"ts": 5, "values": {"p": 1.5, "i": 2}}', NOW)
    assert [(r.machine, r.sensor, r.ts, r.value) for r in one.readings] == [
        ("pump-7", "p", 5.0, 1.5),
        ("pump-7", "i", 5.0, 2.0),
    ]
    batch = ingestor.parse(
        "plant/pump-7", b'[{"ts": 1, "values": {"p": 1}}, {"ts": 2, "values": {"p": 2}}]', NOW
    )
    assert [r.ts for r in batch.readings] == [1.0, 2.0]


def test_rfc3339_timestamps_and_missing_ts(ingestor: Ingestor) -> None:
    r = ingestor.parse("plant/m/s", b'{"ts": "2023-11-14T22:13:20+00:00", "value": 1}', NOW)
    assert r.readings[0].ts == 1_700_000_000.0
    naive = ingestor.parse("plant/m/s", b'{"ts": "2023-11-14T22:13:20", "value": 1}', NOW)
    assert naive.readings[0].ts == 1_700_000_000.0
    assert ingestor.parse("plant/m/s", b'{"value": 1}', NOW).readings[0].ts == NOW


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("plant/m/s", b"{not json", "malformed"),
        ("plant/m/s", b"", "malformed"),
        ("plant/m/s", b"NaN", "non_finite"),
        ("plant/m/s", b'{"value": Infinity}', "non_finite"),
        ("plant/m/s", b'{"value": 1e999}', "non_finite"),
        # Finite, but infinite in the float32 windows.
        ("plant/m/s", b'{"value": 1e39}', "non_finite"),
        ("plant/m/s", b"-1e300", "non_finite"),
        ("plant/m/s", b"1" + b"0" * 39, "non_finite"),
        ("plant/m", b'{"values": {"a": 1e300}}', "non_finite"),
        ("plant/m/s", b'{"value": "3.2"}', "schema"),
        ("plant/m/s", b'{"value": true}', "schema"),
        ("plant/m/s", b'{"value": 1, "extra": 2}', "schema"),
        ("plant/m/s", b'{"ts": "yesterday", "value": 1}', "schema"),
        ("plant/m", b'{"values": [1, 2]}', "schema"),
        ("plant/m", b"[]", "schema"),
        ("plant//s", b"1", "unknown_topic"),
        ("other/m", b"1", "unknown_topic"),
        ("plant/m/s", b"1" * 300, "too_large"),
        ("plant/m/s", b'{"ts": 1700009999, "value": 1}', "future"),
        ("plant/press-1/temperature", b"1", "unknown_sensor"),
    ],
)
def test_each_bad_input_is_rejected_with_its_reason(
    ingestor: Ingestor, topic: str, payload: bytes, reason: str
) -> None:
    result = ingestor.parse(topic, payload, NOW)
    assert result.readings == []
    assert [r.reason.value for r in result.rejections] == [reason]


def test_one_bad_value_does_not_reject_its_neighbours(ingestor: Ingestor) -> None:
    r = ingestor.parse("plant/m", b'{"values": {"a": 1, "b": null, "c": NaN}}', NOW)
    assert [x.sensor for x in r.readings] == ["a"]
    assert sorted(x.reason for x in r.rejections) == [
        RejectReason.NON_FINITE,
        RejectReason.SCHEMA,
    ]


def test_a_value_beyond_float32_does_not_reject_its_record(ingestor: Ingestor) -> None:
    r = ingestor.parse("plant/m", b'{"values": {"a": 3.0e38, "b": -3.5e38}}', NOW)
    assert r.rows == []
    assert [(x.sensor, x.value) for x in r.readings] == [("a", 3.0e38)]
    assert [x.reason for x in r.rejections] == [RejectReason.NON_FINITE]
    assert "float32" in r.rejections[0].detail


def test_undeclared_machines_can_be_refused() -> None:
    strict = Ingestor(("plant/{machine}",), 256, declared={"a": ("x",)}, allow_undeclared=False)
    assert reasons(strict, "plant/b", b'{"values": {"x": 1}}') == ["unknown_topic"]
    assert strict.parse("plant/a", b'{"values": {"x": 1}}', NOW).readings


def test_remembered_topics_match_as_the_first_time(
    ingestor: Ingestor, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = b'{"ts": 1699999999, "value": 1.5}'
    first = ingestor.parse("plant/pump-7/pressure", payload, NOW)
    again = ingestor.parse("plant/pump-7/pressure", payload, NOW)
    assert again.readings == first.readings
    assert again.machine == "pump-7"
    assert reasons(ingestor, "other/pump-7", b"1") == ["unknown_topic"]
    assert reasons(ingestor, "other/pump-7", b"1") == ["unknown_topic"]
    monkeypatch.setattr("service.stream.ingest.MAX_CACHED_TOPICS", 1)
    fresh = Ingestor(("plant/{machine}/{sensor}",), max_payload_bytes=256)
    for m in range(3):  # beyond the bound: matched every time, not remembered
        assert fresh.parse(f"plant/m{m}/s", payload, NOW).readings[0].machine == f"m{m}"
    assert fresh.parse("plant/m2/s", payload, NOW).readings[0].machine == "m2"

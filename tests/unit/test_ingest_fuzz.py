"""Property-based fuzzing of `Ingestor.parse` and of the accounting the metrics rely on.

The invariant: every unit of input is either a reading or a rejection. For a message,
`readings + sum(rejection.count)` is at least 1, except for per-machine records whose
`values` dict is empty (no sensor, nothing to count). The daemon's metrics build on it:
`aemon_readings_received_total` counts exactly those units, and every one of them ends up
in `aemon_readings_accepted_total` or `aemon_readings_rejected_total`, so

    received == accepted + rejected        (once the pipeline's queue is drained)

Deterministic (`derandomize=True`, no example database) and fast: 4 x 2500 examples on the
parser, plus a smaller end-to-end run of the accounting through `App.on_message` and the
pipeline.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from service.app import App
from service.core.config import Settings
from service.core.metrics import REJECTED
from service.core.types import RejectReason
from service.stream.ingest import Ingestor, IngestResult

NOW = 1_700_000_000.0
TOLERANCE = 60.0
TEMPLATES = ("plant/{machine}/{sensor}", "plant/{machine}")
DECLARED = {"press-1": ("force", "stroke")}
INGEST_REASONS = {
    RejectReason.MALFORMED,
    RejectReason.SCHEMA,
    RejectReason.NON_FINITE,
    RejectReason.UNKNOWN_TOPIC,
    RejectReason.UNKNOWN_SENSOR,
    RejectReason.TOO_LARGE,
    RejectReason.FUTURE,
}
# 800 examples a property keep the suite within CI's budget; AEMON_FUZZ_EXAMPLES runs more.
FUZZ = settings(
    max_examples=int(os.environ.get("AEMON_FUZZ_EXAMPLES", "800")),
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

OPEN = Ingestor(TEMPLATES, max_payload_bytes=2048, future_tolerance=TOLERANCE)
CLOSED = Ingestor(
    TEMPLATES,
    max_payload_bytes=2048,
    future_tolerance=TOLERANCE,
    declared=DECLARED,
    allow_undeclared=False,
)

# -- strategies ---------------------------------------------------------------------------
level = st.one_of(
    st.sampled_from(["", "+", "#", "pump-7", "press-1", "force", "a b", "ü", "\x00", "x" * 300]),
    st.text(max_size=12),
)
topics = st.one_of(
    st.lists(level, min_size=0, max_size=5).map("/".join),
    st.builds(lambda m: f"plant/{m}", level),
    st.builds(lambda m, s: f"plant/{m}/{s}", level, level),
)
good_topics = st.sampled_from(
    ["plant/pump-7", "plant/pump-7/pressure", "plant/press-1", "plant/press-1/force"]
)
weird_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
    st.sampled_from([10**400, -(10**400), 2**63, -(2**63) - 1, 1e308, -0.0, NOW, NOW + 1e6]),
)
scalars = st.one_of(
    st.none(), st.booleans(), weird_numbers, st.text(max_size=8), st.just("2024-01-01T00:00:00Z")
)
json_any = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
timestamps = st.one_of(
    weird_numbers,
    st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01T00:00:00", "9999-12-31T23:59:59", "x"]),
    json_any,
)
values = st.one_of(weird_numbers, json_any)
sensor_record = st.fixed_dictionaries(
    {"value": values}, optional={"ts": timestamps, "extra": json_any}
)
machine_record = st.fixed_dictionaries(
    {"values": st.dictionaries(st.sampled_from(["force", "stroke", "p", ""]), values, max_size=4)},
    optional={"ts": timestamps, "extra": json_any},
)
records = st.one_of(values, sensor_record, machine_record)
documents = st.one_of(records, st.lists(records, max_size=5))


def nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


def dumps(document: Any) -> bytes:
    try:
        return json.dumps(document, allow_nan=True).encode()
    except ValueError:  # ints beyond the str-conversion limit
        return b"[]"


payloads = st.one_of(
    st.binary(max_size=64),
    documents.map(dumps),
    st.integers(1, 3000).map(nested),
    st.sampled_from([b"", b"NaN", b"-Infinity", b"1e999", b"\xff", b"{", b"[]", b"{}", b"null"]),
)


# -- the invariant ------------------------------------------------------------------------
def units(result: IngestResult) -> int:
    return result.count + sum(r.count for r in result.rejections)


def empty_values_only(payload: bytes) -> bool:
    """True when the payload is per-machine records whose `values` are all empty."""
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        return False
    batch = document if isinstance(document, list) else [document]
    return bool(batch) and all(
        isinstance(r, dict) and r.get("values") == {} and set(r) <= {"ts", "values"} for r in batch
    )


def check(ingestor: Ingestor, topic: str, payload: bytes) -> IngestResult:
    result = ingestor.parse(topic, payload, NOW)
    if units(result) == 0:
        assert empty_values_only(payload), (topic, payload)
    assert result.count == len(result.all_readings())
    for reading in result.all_readings():
        assert math.isfinite(reading.value)
        assert math.isfinite(reading.ts)
        assert reading.ts <= NOW + TOLERANCE
        assert reading.machine
        assert not set(reading.machine) & set("/+#")
        assert not set(reading.sensor) & set("/+#")
        if ingestor is CLOSED:
            assert reading.sensor in DECLARED[reading.machine]
    for rejection in result.rejections:
        assert rejection.reason in INGEST_REASONS
        assert rejection.count == 1
    again = ingestor.parse(topic, payload, NOW)
    assert (again.rows, again.readings, again.rejections) == (
        result.rows,
        result.readings,
        result.rejections,
    )
    return result


@FUZZ
@given(topics, st.binary(max_size=96))
def test_random_bytes_on_random_topics(topic: str, payload: bytes) -> None:
    check(OPEN, topic, payload)
    check(CLOSED, topic, payload)


@FUZZ
@given(good_topics, documents)
def test_random_documents_of_the_payload_shapes(topic: str, document: Any) -> None:
    check(OPEN, topic, dumps(document))
    check(CLOSED, topic, dumps(document))


@FUZZ
@given(topics, st.sampled_from([b"3.2", b'{"ts": 1699999999, "value": 1}', b'{"values": {}}']))
def test_random_topics_with_valid_payloads(topic: str, payload: bytes) -> None:
    for ingestor in (OPEN, CLOSED):
        result = check(ingestor, topic, payload)
        if not (topic.startswith("plant/") and 2 <= topic.count("/") + 1 <= 3):
            assert [r.reason for r in result.rejections] == [RejectReason.UNKNOWN_TOPIC]


@FUZZ
@given(st.one_of(good_topics, topics), payloads)
def test_mixed_payloads(topic: str, payload: bytes) -> None:
    check(OPEN, topic, payload)
    check(CLOSED, topic, payload)


def test_too_large_is_checked_before_parsing() -> None:
    result = OPEN.parse("plant/pump-7", b"[" * 5000, NOW)
    assert [r.reason for r in result.rejections] == [RejectReason.TOO_LARGE]


def test_huge_integers_are_non_finite_not_a_crash() -> None:
    for payload in (b"1" + b"0" * 400, b'{"value": -1' + b"0" * 400 + b"}"):
        result = OPEN.parse("plant/pump-7/p", payload, NOW)
        assert [r.reason for r in result.rejections] == [RejectReason.NON_FINITE]


# -- the metrics' accounting, end to end through App.on_message and the pipeline ----------
def _sum(registry: CollectorRegistry, name: str) -> float:
    return sum(s.value for metric in registry.collect() for s in metric.samples if s.name == name)


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(st.lists(st.tuples(st.one_of(good_topics, topics), payloads), min_size=1, max_size=8))
def test_received_equals_accepted_plus_rejected(messages: list[tuple[str, bytes]]) -> None:
    registry = CollectorRegistry()
    app = App(
        Settings(
            http={"host": "127.0.0.1", "port": 0},
            ingest={"queue_size": 3, "max_payload_bytes": 2048, "max_machines": 2},
            machines={"press-1": {"sensors": ("force", "stroke")}},
        ),
        registry,
    )
    try:
        for topic, payload in messages:
            app.on_message(topic, payload, NOW)
        while not app.pipeline.queue.empty():
            app.pipeline.cycle(timeout=0)
    finally:
        app.http.server.server_close()
    received = _by_machine(registry, "aemon_readings_received_total")
    accepted = _by_machine(registry, "aemon_readings_accepted_total")
    rejected = _by_machine(registry, "aemon_readings_rejected_total")
    # Per label, and no label but an accepted machine's and the one for the others.
    assert set(received) <= {*app.pipeline.machines, REJECTED}
    for label, count in received.items():
        assert count == accepted.get(label, 0) + rejected.get(label, 0), label
    assert set(accepted) | set(rejected) <= set(received)
    assert _sum(registry, "aemon_messages_received_total") == len(messages)


def _by_machine(registry: CollectorRegistry, name: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == name:
                totals[s.labels["machine"]] = totals.get(s.labels["machine"], 0) + s.value
    return totals


# -- the batch fast path against `add` for every value -------------------------------------
class SlowIngestor(Ingestor):
    """Every value of a per-machine record through `add`: what the fast path replaced."""

    def _values(
        self,
        result: IngestResult,
        machine: str,
        ts: float,
        values: dict[str, Any],
        received_at: float,
        finite: bool = False,
    ) -> None:
        for sensor, value in values.items():
            self.add(result, machine, sensor, ts, value, received_at)


SLOW_OPEN = SlowIngestor(TEMPLATES, max_payload_bytes=2048, future_tolerance=TOLERANCE)
SLOW_CLOSED = SlowIngestor(
    TEMPLATES,
    max_payload_bytes=2048,
    future_tolerance=TOLERANCE,
    declared=DECLARED,
    allow_undeclared=False,
)
machine_topics = st.sampled_from(["plant/pump-7", "plant/press-1"])


@FUZZ
@given(machine_topics, st.one_of(machine_record, st.lists(machine_record, max_size=5)))
def test_the_batch_fast_path_takes_and_rejects_what_the_slow_path_does(
    topic: str, document: Any
) -> None:
    same_as_slow_path(topic, dumps(document))


def same_as_slow_path(topic: str, payload: bytes) -> IngestResult:
    """The fast path's rows and readings, value by value, are the slow path's readings."""
    for fast, slow in ((OPEN, SLOW_OPEN), (CLOSED, SLOW_CLOSED)):
        got, want = fast.parse(topic, payload, NOW), slow.parse(topic, payload, NOW)
        assert not want.rows
        assert got.all_readings() == want.readings
        assert [type(r.value) for r in got.all_readings()] == [type(r.value) for r in want.readings]
        assert got.rejections == want.rejections
        assert got.count == want.count
    return OPEN.parse(topic, payload, NOW)


# Records that are mostly valid rows (finite floats of the declared sensors), with now and
# then one value, sensor or time that is not: where the row path and the per-value path
# part, and where a valid record follows an invalid one in the same message.
row_values = st.dictionaries(
    st.sampled_from(["force", "stroke", "p"]),
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from([1e308, -1e308, math.nan, math.inf, 1, True, "1.0", None]),
    ),
    min_size=1,
    max_size=3,
)
row_records = st.fixed_dictionaries(
    {"values": row_values},
    optional={"ts": st.sampled_from([NOW - 5.0, NOW, NOW + 1e6, 1699999999, math.nan])},
)


@FUZZ
@given(machine_topics, st.lists(row_records, min_size=1, max_size=6))
def test_rows_are_the_readings_the_per_value_path_makes(topic: str, document: Any) -> None:
    same_as_slow_path(topic, dumps(document))


def test_a_valid_record_is_one_row_until_a_record_needs_the_per_value_path() -> None:
    good = {"ts": NOW, "values": {"force": 1.5, "stroke": 2.5}}
    bad = {"ts": NOW + 1, "values": {"force": math.nan, "stroke": 3.5}}
    later = {"ts": NOW + 2, "values": {"force": 4.5, "stroke": 5.5}}
    result = same_as_slow_path("plant/press-1", dumps([good, bad, later]))
    # The record after the one with NaN goes value by value: rows come before readings.
    assert [row.ts for row in result.rows] == [NOW]
    assert [(r.sensor, r.ts) for r in result.readings] == [
        ("stroke", NOW + 1),
        ("force", NOW + 2),
        ("stroke", NOW + 2),
    ]
    assert [r.reason for r in result.rejections] == [RejectReason.NON_FINITE]


# -- rows against readings end to end: App.on_message, the pipeline, discovery, windows ----
def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name.startswith(("aemon_readings_", "aemon_window_gaps"))
        and not s.name.endswith("_created")
    }


def _run_app(ingestor: Ingestor | None, messages: list[tuple[str, bytes, bool]]) -> tuple[Any, ...]:
    registry = CollectorRegistry()
    app = App(
        Settings(
            http={"host": "127.0.0.1", "port": 0},
            ingest={"max_payload_bytes": 4096, "future_tolerance": TOLERANCE},
            machines={"press-1": {"sensors": ("force", "stroke")}},
            discovery={"period": 2.0},
            window={"length": 3, "stride": 1, "max_stale": 1.5, "lateness": 1.0},
            learning={"windows": 10_000},
        ),
        registry,
    )
    if ingestor is not None:
        ingestor.declared = app.ingestor.declared
        app.ingestor = ingestor
    try:
        for topic, payload, cycle in messages:
            app.on_message(topic, payload, NOW)
            if cycle:
                app.pipeline.cycle(timeout=0)
        while not app.pipeline.queue.empty():
            app.pipeline.cycle(timeout=0)
    finally:
        app.http.server.server_close()
    learned = {
        name: [w.tolist() for w in runtime._learning]
        for name, runtime in app.pipeline.machines.items()
    }
    states = {name: (r.sensors, r.newest_ts) for name, r in app.pipeline.machines.items()}
    return _samples(registry), learned, states


row_time = st.sampled_from([-4, 1, 1, 1, 2, 0, -1])
row_message = st.tuples(
    st.sampled_from(["plant/press-1", "plant/pump-7", "plant/press-1/force", "plant/pump-7/p"]),
    st.lists(st.tuples(row_time, row_values), min_size=1, max_size=4),
    st.booleans(),
)


@settings(max_examples=150, derandomize=True, database=None, deadline=None)
@given(st.lists(row_message, min_size=1, max_size=12))
def test_rows_end_to_end_count_and_window_as_readings_do(
    script: list[tuple[str, list[tuple[int, dict[str, Any]]], bool]],
) -> None:
    """The same messages through the row path and through the per-value path (every value
    of a record through `add`): the same counters by machine and reason, the same sensors
    discovered and the same windows learned from."""
    clock = NOW - 100.0
    messages = []
    for topic, records, cycle in script:
        documents = []
        for step, values in records:
            clock += step
            documents.append({"ts": clock, "values": values})
        if topic.count("/") == 2:
            payload = dumps(
                [{"ts": d["ts"], "value": v} for d in documents for v in d["values"].values()]
            )
        else:
            payload = dumps(documents)
        messages.append((topic, payload, cycle))
    slow = SlowIngestor(("plant/{machine}/{sensor}", "plant/{machine}"), 4096, TOLERANCE)
    assert _run_app(None, messages) == _run_app(slow, messages)

"""Sparkplug B decoding: births and aliases, data types, sequence gaps and rebirths,
deaths, and what is ignored; the edge node's payloads come from the simulator's encoder."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from service.core.metrics import Metrics
from service.core.types import RejectReason
from service.stream import sparkplug
from service.stream.ingest import Ingestor
from service.stream.sparkplug import SparkplugReader
from service.stream.sparkplug_schema import INT64, Payload
from simulators.sparkplug_edge import SparkplugEdge, is_rebirth_request
from tests.support import metric_value

SENSORS = ("pressure", "current")


class Wire:
    """The reader with an edge node beside it; rebirth requests are collected."""

    def __init__(self, interval: float = 10.0) -> None:
        # Births carry the wall clock's time: the test's own now (whole seconds: exact ms).
        self.now = float(int(time.time()))
        self.requests: list[tuple[str, bytes]] = []
        self.gone: list[str] = []  # machines said to be offline
        self.metrics = Metrics(CollectorRegistry())
        ingestor = Ingestor(("plant/{machine}",), max_payload_bytes=4096)
        self.reader = SparkplugReader(
            ("plant1",),
            ingestor,
            self.metrics,
            lambda topic, payload: self.requests.append((topic, payload)),
            interval,
            {"plant1/edge7/pump-2": "pump-2"},
            self.gone.extend,
        )
        self.edge = SparkplugEdge("plant1", "edge7", {"pump-1": SENSORS, "pump-2": SENSORS})

    def send(self, message: tuple[str, bytes], at: float | None = None):  # type: ignore[no-untyped-def]
        return self.reader.parse(message[0], message[1], self.now if at is None else at)

    def born(self) -> None:
        for message in self.edge.births({"pump-1": {"pressure": 3.0, "current": 1.0}}):
            self.send(message)

    def counted(self, kind: str) -> float:
        text = generate_latest(self.metrics.registry).decode()
        return metric_value(text, "aemon_sparkplug_messages_total", kind=kind)


def test_data_by_alias_is_read_with_the_births_names_and_the_metrics_times() -> None:
    wire = Wire()
    births = [wire.send(m) for m in wire.edge.births({"pump-1": {"pressure": 3.0}})]
    assert [r.rejections for r in births] == [[], [], []]
    assert [(x.sensor, x.value) for x in births[1].readings] == [("pressure", 3.0)]
    result = wire.send(wire.edge.data("pump-1", wire.now - 5.5, {"pressure": 3.2, "current": 1.4}))
    assert result.machine == "plant1.edge7.pump-1"
    assert [(x.sensor, x.ts, x.value) for x in result.readings] == [
        ("pressure", wire.now - 5.5, 3.2),
        ("current", wire.now - 5.5, 1.4),
    ]
    mapped = wire.send(wire.edge.data("pump-2", wire.now, {"current": 2.0}))
    assert mapped.machine == "pump-2"
    assert wire.requests == []


def test_integers_are_signed_as_their_data_type_says_and_strings_are_ignored() -> None:
    wire = Wire()
    wire.born()
    ignored = wire.counted("ignored_metric")  # the births' null values
    payload = Payload(timestamp=int(wire.now * 1000), seq=wire.edge.next_seq())
    payload.metrics.add(name="level", datatype=3, int_value=(1 << 32) - 5)  # Int32 -5
    payload.metrics.add(name="count", datatype=7, int_value=(1 << 32) - 5)  # UInt32
    payload.metrics.add(name="offset", datatype=INT64, long_value=(1 << 64) - 2)
    payload.metrics.add(name="running", datatype=11, boolean_value=True)
    payload.metrics.add(name="mode", datatype=12, string_value="auto")
    result = wire.send((wire.edge.topic("NDATA"), payload.SerializeToString()))
    assert result.machine == "plant1.edge7"
    assert {x.sensor: x.value for x in result.readings} == {
        "level": -5.0,
        "count": float((1 << 32) - 5),
        "offset": -2.0,
        "running": 1.0,
    }
    assert wire.counted("ignored_metric") == ignored + 1


def test_data_before_a_birth_is_rejected_and_one_rebirth_is_asked() -> None:
    wire = Wire(interval=10.0)
    wire.edge.births()  # published before aemon subscribed: never seen
    first = wire.send(wire.edge.data("pump-1", wire.now, {"pressure": 3.0}), at=wire.now)
    again = wire.send(wire.edge.data("pump-1", wire.now + 1, {"pressure": 3.0}), at=wire.now + 1)
    assert [r.reason for r in first.rejections + again.rejections] == [RejectReason.NO_BIRTH] * 2
    assert [t for t, _ in wire.requests] == ["spBv1.0/plant1/NCMD/edge7"]
    assert is_rebirth_request(wire.requests[0][1])
    wire.send(wire.edge.data("pump-1", wire.now + 11, {"pressure": 3.0}), at=wire.now + 11)
    assert len(wire.requests) == 2  # past rebirth_interval


def test_a_seq_gap_is_counted_and_answered_with_a_rebirth_request() -> None:
    wire = Wire()
    wire.born()
    wire.edge.skip()
    result = wire.send(wire.edge.data("pump-1", wire.now, {"pressure": 3.0}))
    assert len(result.readings) == 1  # the data itself is good
    assert wire.counted("seq_gap") == 1
    assert len(wire.requests) == 1
    wire.send(wire.edge.data("pump-1", wire.now + 1, {"pressure": 3.0}))
    assert wire.counted("seq_gap") == 1


def test_a_death_forgets_the_births_until_the_next_one_and_a_stale_death_is_ignored() -> None:
    wire = Wire()
    wire.born()
    stale_death = wire.edge.death()  # this session's will
    wire.edge.bd_seq += 1
    wire.born()  # a reconnect: the old session's will may arrive after the new birth
    wire.send(stale_death)
    assert wire.send(wire.edge.data("pump-1", wire.now, {"pressure": 3.0})).readings
    wire.send(wire.edge.death())
    dead = wire.send(wire.edge.data("pump-1", wire.now + 1, {"pressure": 3.0}))
    assert [r.reason for r in dead.rejections] == [RejectReason.NO_BIRTH]
    assert wire.counted("node_death") == 1
    assert wire.gone == ["plant1.edge7", "plant1.edge7.pump-1", "pump-2"]


def test_garbage_and_commands() -> None:
    wire = Wire()
    garbage = wire.send(("spBv1.0/plant1/NDATA/edge7", b"\xff\xff\xff"))
    assert [r.reason for r in garbage.rejections] == [RejectReason.MALFORMED]
    command = wire.send(("spBv1.0/plant1/NCMD/edge7", b"anything"))
    assert command.rejections == []
    assert command.readings == []
    other = wire.send(("spBv1.0/plant9/NDATA/edge7", b""))
    assert [r.reason for r in other.rejections] == [RejectReason.UNKNOWN_TOPIC]


def test_made_up_nodes_cannot_grow_the_readers_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sparkplug, "MAX_CACHED_TOPICS", 2)
    wire = Wire(interval=0.0)
    births = [SparkplugEdge("plant1", f"edge{i}", {}).births()[0] for i in range(3)]
    results = [wire.send(birth) for birth in births]
    assert [r.rejections for r in results[:2]] == [[], []]
    assert [r.reason for r in results[2].rejections] == [RejectReason.UNKNOWN_TOPIC]
    for i in range(5):  # data of nodes never born: each asks a rebirth, none is kept long
        wire.send(SparkplugEdge("plant1", f"ghost{i}", {"d": ("x",)}).data("d", wire.now, {}))
    assert len(wire.requests) == 5
    assert len(wire.reader._asked) <= 2

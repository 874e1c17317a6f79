"""`SparkplugReader`: Sparkplug B messages of the configured groups -> readings.

aemon reads `spBv1.0/<group>/<type>/<node>[/<device>]` as a Sparkplug host application:

- a machine is a device, named `<group>.<node>.<device>`, or a node's own metrics,
  `<group>.<node>` (or the name `sparkplug.machines` maps it to); its sensors are its
  numeric metrics (integers, floats, booleans as 0 and 1), by name;
- NBIRTH and DBIRTH give the metrics' names, aliases and data types, and the node's
  `bdSeq`; NDATA and DDATA are decoded with them. Data of a node or device that has not
  been born (since aemon started, or since its death) is rejected as `no_birth`, and a
  rebirth is requested;
- a gap in a node's `seq` (0-255, one per message of the node) is counted and answered
  with a rebirth request (NCMD `Node Control/Rebirth`), at most every
  `sparkplug.rebirth_interval` seconds per node;
- NDEATH (matched by its `bdSeq`) and DDEATH forget the births and mark the machines
  `off` (not stale: their source said they are gone) until their next reading; a gap in
  their windows is never learnt across;
- timestamps are the metrics' own (milliseconds), else the payload's, else arrival.

Ignored and counted in `aemon_sparkplug_messages_total{kind="ignored_metric"}`: null
values, strings, bytes, datasets, templates and other non-numeric metrics; the `bdSeq`,
`Node Control/*` and `Properties/*` metrics are not sensors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from google.protobuf.message import DecodeError

from service.core.metrics import Metrics
from service.core.types import RejectReason
from service.stream.ingest import MAX_CACHED_TOPICS, Ingestor, IngestResult
from service.stream.sparkplug_schema import (
    BOOLEAN,
    DOUBLE,
    FLOAT,
    INT64,
    SIGNED_32,
    UINT64,
    UNSIGNED_32,
    Payload,
)

log = structlog.get_logger(__name__)

NAMESPACE = "spBv1.0"
# Publishes an NCMD rebirth request: (topic, payload).
Publish = Callable[[str, bytes], None]
_NOT_SENSORS = ("bdSeq", "Node Control/", "Properties/")


@dataclass
class _Node:
    """What a node's births said, and its sequence."""

    bd_seq: int | None
    seq: int
    metrics: dict[int | str, tuple[str, int]]  # alias or name -> (name, datatype)
    devices: dict[str, dict[int | str, tuple[str, int]]] = field(default_factory=dict)


class SparkplugReader:
    def __init__(
        self,
        groups: tuple[str, ...],
        ingestor: Ingestor,
        metrics: Metrics,
        publish: Publish,
        rebirth_interval: float = 10.0,
        names: Mapping[str, str] | None = None,
        offline: Callable[[list[str]], None] = lambda machines: None,
    ) -> None:
        self.groups = frozenset(groups)
        self.ingestor = ingestor
        self.metrics = metrics
        self.publish = publish
        self.rebirth_interval = rebirth_interval
        self.names = dict(names or {})
        self.offline = offline
        self._nodes: dict[tuple[str, str], _Node] = {}
        self._asked: dict[tuple[str, str], float] = {}

    @property
    def subscriptions(self) -> list[str]:
        return [f"{NAMESPACE}/{group}/#" for group in sorted(self.groups)]

    def parse(self, topic: str, payload: bytes, received_at: float) -> IngestResult:
        result = IngestResult()
        parts = topic.split("/")
        if len(parts) not in (4, 5) or parts[1] not in self.groups:
            return result.reject(RejectReason.UNKNOWN_TOPIC, topic)
        _, group, kind, node = parts[:4]
        device = parts[4] if len(parts) == 5 else None
        if kind in ("NCMD", "DCMD"):
            return result  # commands to edge nodes (aemon's own rebirth requests among them)
        message = _decoded(result, payload, self.ingestor.max_payload_bytes)
        if message is None:
            return result
        machine = result.machine = self.machine_name(group, node, device)
        known = self._follow((group, node), kind, device, message, received_at)
        if known is None:
            if kind.endswith("DATA") or kind.endswith("BIRTH"):
                result.reject(*self._unread(kind), machine)
            return result
        if not self.ingestor.admits(machine):
            return result.reject(RejectReason.UNKNOWN_TOPIC, f"undeclared machine {machine}")
        self._readings(result, machine, message, known, received_at)
        return result

    def _follow(
        self,
        key: tuple[str, str],
        kind: str,
        device: str | None,
        message: Any,
        received_at: float,
    ) -> dict[int | str, tuple[str, int]] | None:
        """Births, deaths and sequence of a node: the metrics a data or birth message is
        read with, or None when it has no readings (a death, or nothing born)."""
        if kind == "NBIRTH":
            if key not in self._nodes and len(self._nodes) >= MAX_CACHED_TOPICS:
                return None  # a flood of made-up nodes must not grow it
            self._nodes[key] = _Node(_bd_seq(message), int(message.seq), _defined(message))
            self._count("birth")
        elif kind == "NDEATH":
            self._node_death(key, message)
            return None
        elif not self._in_sequence(key, message, received_at):
            return None
        node = self._nodes[key]
        if kind == "DBIRTH" and device is not None:
            node.devices[device] = _defined(message)
            self._count("birth")
        elif kind == "DDEATH" and device is not None:
            node.devices.pop(device, None)
            self._count("device_death")
            self.offline([self.machine_name(*key, device)])
            return None
        known = node.metrics if device is None else node.devices.get(device)
        if known is None:
            self._ask_rebirth(key, received_at)
        return known

    def _unread(self, kind: str) -> tuple[RejectReason, str]:
        """Why a data or birth message gave no readings."""
        if kind == "NBIRTH":
            return RejectReason.UNKNOWN_TOPIC, f"{len(self._nodes)} Sparkplug nodes already"
        return RejectReason.NO_BIRTH, f"{kind} before its birth"

    def machine_name(self, group: str, node: str, device: str | None) -> str:
        path = f"{group}/{node}" if device is None else f"{group}/{node}/{device}"
        return self.names.get(path) or path.replace("/", ".")

    def _in_sequence(self, key: tuple[str, str], message: Any, received_at: float) -> bool:
        """False for a node never born; a gap in its `seq` is counted and a rebirth asked."""
        node = self._nodes.get(key)
        if node is None:
            self._ask_rebirth(key, received_at)
            return False
        seq = int(message.seq)
        if seq != (node.seq + 1) % 256:
            self._count("seq_gap")
            log.warning(
                "sparkplug_seq_gap",
                group=key[0],
                node=key[1],
                expected=(node.seq + 1) % 256,
                seq=seq,
            )
            self._ask_rebirth(key, received_at)
        node.seq = seq
        return True

    def _node_death(self, key: tuple[str, str], message: Any) -> None:
        node = self._nodes.get(key)
        if node is not None and node.bd_seq in (None, _bd_seq(message)):
            del self._nodes[key]
            self._count("node_death")
            log.info("sparkplug_node_death", group=key[0], node=key[1], bd_seq=node.bd_seq)
            gone = [self.machine_name(*key, None)]
            self.offline(gone + [self.machine_name(*key, d) for d in node.devices])

    def _ask_rebirth(self, key: tuple[str, str], now: float) -> None:
        if now - self._asked.get(key, -self.rebirth_interval) < self.rebirth_interval:
            return
        if len(self._asked) >= MAX_CACHED_TOPICS:  # a flood of made-up nodes must not grow it
            self._asked.clear()
        self._asked[key] = now
        request = Payload(timestamp=int(time.time() * 1000))
        request.metrics.add(name="Node Control/Rebirth", datatype=BOOLEAN, boolean_value=True)
        self.publish(f"{NAMESPACE}/{key[0]}/NCMD/{key[1]}", request.SerializeToString())
        self._count("rebirth_requested")
        log.info("sparkplug_rebirth_requested", group=key[0], node=key[1])

    def _readings(
        self,
        result: IngestResult,
        machine: str,
        message: Any,
        known: dict[int | str, tuple[str, int]],
        received_at: float,
    ) -> None:
        default_ts = message.timestamp / 1000 if message.HasField("timestamp") else received_at
        for metric in message.metrics:
            name, datatype = _described(metric, known)
            if name is None or name.startswith(_NOT_SENSORS):
                continue
            value = None if metric.is_null else _number(metric, datatype)
            if value is None:
                self._count("ignored_metric")
                continue
            ts = metric.timestamp / 1000 if metric.HasField("timestamp") else default_ts
            self.ingestor.add(result, machine, name, ts, value, received_at)

    def _count(self, kind: str) -> None:
        self.metrics.sparkplug_messages.labels(kind=kind).inc()


def _defined(message: Any) -> dict[int | str, tuple[str, int]]:
    """A birth's metrics by alias and by name: (name, datatype)."""
    defined: dict[int | str, tuple[str, int]] = {}
    for metric in message.metrics:
        described = (metric.name, int(metric.datatype))
        defined[metric.name] = described
        if metric.HasField("alias"):
            defined[int(metric.alias)] = described
    return defined


def _described(metric: Any, known: dict[int | str, tuple[str, int]]) -> tuple[str | None, int]:
    """A data message's metric by its name or its alias, with the birth's data type."""
    if metric.HasField("name") and metric.name:
        name, datatype = known.get(metric.name, (metric.name, 0))
    elif metric.HasField("alias") and int(metric.alias) in known:
        name, datatype = known[int(metric.alias)]
    else:
        return None, 0
    return name, int(metric.datatype) if metric.HasField("datatype") else datatype


def _bd_seq(message: Any) -> int | None:
    for metric in message.metrics:
        if metric.name == "bdSeq":
            return int(metric.long_value)
    return None


def _signed(bits: int) -> Callable[[int], float]:
    return lambda v: float(v - (1 << bits) if v >= 1 << (bits - 1) else v)


# Sparkplug data type -> (the value field it is carried in, how it becomes a float).
_NUMERIC: dict[int, tuple[str, Callable[[Any], float]]] = {
    **{t: ("int_value", _signed(32)) for t in SIGNED_32},
    **{t: ("int_value", float) for t in UNSIGNED_32},
    INT64: ("long_value", _signed(64)),
    UINT64: ("long_value", float),
    FLOAT: ("float_value", float),
    DOUBLE: ("double_value", float),
    BOOLEAN: ("boolean_value", lambda v: 1.0 if v else 0.0),
}


def _number(metric: Any, datatype: int) -> float | None:
    """The metric's value as a number, None when it is not one."""
    carried = _NUMERIC.get(datatype)
    if carried is None or not metric.HasField(carried[0]):
        return None
    return carried[1](getattr(metric, carried[0]))


def _decoded(result: IngestResult, payload: bytes, max_bytes: int) -> Any:
    """The payload's protobuf message; None, with the rejection, when it is not one."""
    if len(payload) > max_bytes:
        result.reject(RejectReason.TOO_LARGE, f"{len(payload)} bytes")
        return None
    try:
        return Payload.FromString(payload)
    except DecodeError as exc:
        result.reject(RejectReason.MALFORMED, f"Sparkplug B payload: {exc}"[:200])
        return None

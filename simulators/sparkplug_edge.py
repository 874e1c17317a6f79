"""A Sparkplug B edge node's payloads: births with aliases, data by alias, seq and bdSeq.

What `python -m simulators.plant --payload sparkplug` publishes, and what the tests use to
speak Sparkplug to the daemon. One node per plant, one device per machine; every metric
is a Double with an alias (its index), and data messages carry aliases only, as gateways
that save bandwidth do.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from google.protobuf.message import DecodeError

from service.stream.sparkplug_schema import BOOLEAN, DOUBLE, INT64, Payload

NAMESPACE = "spBv1.0"


class SparkplugEdge:
    def __init__(
        self, group: str, node: str, devices: dict[str, tuple[str, ...]], bd_seq: int = 0
    ) -> None:
        self.group, self.node = group, node
        self.devices = devices
        self.bd_seq = bd_seq
        self._seq = -1

    def topic(self, kind: str, device: str | None = None) -> str:
        tail = f"/{device}" if device is not None else ""
        return f"{NAMESPACE}/{self.group}/{kind}/{self.node}{tail}"

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) % 256
        return self._seq

    def death(self) -> tuple[str, bytes]:
        """The NDEATH, to set as the connection's last will before connecting."""
        payload = Payload(timestamp=_now_ms())
        payload.metrics.add(name="bdSeq", datatype=INT64, long_value=self.bd_seq)
        return self.topic("NDEATH"), payload.SerializeToString()

    def births(self, values: dict[str, dict[str, float]] | None = None) -> list[tuple[str, bytes]]:
        """NBIRTH (seq 0, this session's bdSeq) then a DBIRTH per device, with every metric's
        name, alias, data type and (given) value."""
        self._seq = -1
        node = Payload(timestamp=_now_ms(), seq=self.next_seq())
        node.metrics.add(name="bdSeq", datatype=INT64, long_value=self.bd_seq)
        node.metrics.add(name="Node Control/Rebirth", datatype=BOOLEAN, boolean_value=False)
        out = [(self.topic("NBIRTH"), node.SerializeToString())]
        for device, sensors in self.devices.items():
            birth = Payload(timestamp=_now_ms(), seq=self.next_seq())
            for alias, sensor in enumerate(sensors):
                metric = birth.metrics.add(name=sensor, alias=alias, datatype=DOUBLE)
                value = (values or {}).get(device, {}).get(sensor)
                if value is None:
                    metric.is_null = True
                else:
                    metric.double_value = value
            out.append((self.topic("DBIRTH", device), birth.SerializeToString()))
        return out

    def data(self, device: str, ts: float, values: dict[str, float]) -> tuple[str, bytes]:
        """A DDATA of one timestamp, every metric by its alias only."""
        payload = Payload(timestamp=int(ts * 1000), seq=self.next_seq())
        for alias, sensor in enumerate(self.devices[device]):
            if sensor in values:
                payload.metrics.add(alias=alias, double_value=values[sensor])
        return self.topic("DDATA", device), payload.SerializeToString()

    def skip(self) -> None:
        """Loses a message: the next one's seq shows a gap."""
        self.next_seq()


def is_rebirth_request(payload: bytes) -> bool:
    """An NCMD asking for a rebirth."""
    message: Any = Payload.FromString(payload)
    return any(m.name == "Node Control/Rebirth" and m.boolean_value for m in message.metrics)


def _now_ms() -> int:
    return int(time.time() * 1000)


class SparkplugSink:
    """The plant as one Sparkplug edge node (`edge`) of group `group`, each machine a
    device: births after connecting and whenever aemon asks (NCMD Node Control/Rebirth),
    data by alias, NDEATH as the last will and on a clean close."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        group: str,
        devices: dict[str, tuple[str, ...]],
        bd_seq: int = 0,
    ) -> None:
        # The import stays here: the plain JSON plant does not need paho's Sparkplug side.
        from simulators.publish import MqttSink

        self.edge = SparkplugEdge(group, "edge", devices, bd_seq)
        self.rebirth = threading.Event()
        self.mqtt = MqttSink(
            host,
            port,
            client_id,
            will=self.edge.death(),
            commands=(self.edge.topic("NCMD"), self._on_command),
        )
        self._births()

    def _on_command(self, payload: bytes) -> None:
        # paho's thread: only flag it; the publishing thread sends the births.
        with contextlib.suppress(DecodeError):
            if is_rebirth_request(payload):
                self.rebirth.set()

    def _births(self) -> None:
        for topic, payload in self.edge.births():
            self.mqtt.publish(topic, payload, 1)

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self.mqtt.publish(topic, payload, qos)

    def sample(self, machine: str, ts: float, values: dict[str, float], qos: int) -> None:
        if self.rebirth.is_set():
            self.rebirth.clear()
            self._births()
        topic, payload = self.edge.data(machine, ts, values)
        self.mqtt.publish(topic, payload, qos)

    def close(self) -> None:
        topic, payload = self.edge.death()
        self.mqtt.publish(topic, payload, 1)
        self.mqtt.close()

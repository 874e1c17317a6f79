"""Messages read by aemon's paho client: as paho decodes them, with fewer reads.

paho reads a packet with three recv() calls and goes back to select() after each packet;
every system call gives the GIL up. `FastClient` serves paho's reads from a buffer, reads every
packet the socket has in one pass, and hands a plain PUBLISH (QoS 0 or 1, no properties)
straight to `deliver`. These tests drive it over a socket pair, the broker's end written by
hand, against a plain paho client fed the same bytes.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from service.transport import paho_client
from service.transport.paho_client import FastClient

Delivered = tuple[str, bytes, int, int]


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: str, payload: bytes, qos: int = 1, mid: int = 1, props: bytes = b"\0") -> bytes:
    """An MQTT 5 PUBLISH as a broker sends it."""
    name = topic.encode()
    body = len(name).to_bytes(2, "big") + name
    body += mid.to_bytes(2, "big") if qos else b""
    body += props + payload
    return bytes([0x30 | qos << 1]) + remaining_length(len(body)) + body


def content_type(value: str) -> bytes:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = value
    packed: bytes = props.pack()  # type: ignore[no-untyped-call]
    return packed


def readings(n: int) -> list[bytes]:
    return [
        publish(f"plant/m{i % 7}/temperature", b'{"value": %d.5}' % i, mid=i + 1) for i in range(n)
    ]


class Wire:
    """A client whose socket is one end of a socket pair; the test writes the other."""

    def __init__(self, client: paho.Client) -> None:
        self.client = client
        self.broker, ours = socket.socketpair()
        ours.setblocking(False)
        client._sock = ours
        self.got: list[Delivered] = []
        self.paths: list[str] = []
        client.on_message = self._on_message
        if isinstance(client, FastClient):
            client.deliver = self._deliver

    def _on_message(self, client: paho.Client, userdata: object, m: paho.MQTTMessage) -> None:
        self.got.append((m.topic, bytes(m.payload), m.mid, m.qos))
        self.paths.append("paho")

    def _deliver(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        self.got.append((topic, payload, mid, qos))
        self.paths.append("deliver")

    def send(self, data: bytes) -> None:
        self.broker.sendall(data)

    def read_all(self, expected: int, max_passes: int = 10_000) -> int:
        """Passes of loop_read until `expected` messages came; returns how many it took."""
        for passes in range(1, max_passes + 1):
            assert self.client.loop_read() == paho.MQTT_ERR_SUCCESS
            if len(self.got) >= expected:
                return passes
        raise AssertionError(f"{len(self.got)} of {expected} messages after {max_passes} passes")

    def socket_readable(self) -> bool:
        return bool(select.select([self.client._sock], [], [], 0)[0])

    def close(self) -> None:
        assert self.client._sock is not None
        self.client._sock.close()
        self.broker.close()


def new_client(cls: type[paho.Client]) -> paho.Client:
    return cls(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, manual_ack=True
    )


@pytest.fixture
def ours() -> Iterator[Wire]:
    wire = Wire(new_client(FastClient))
    yield wire
    wire.close()


@pytest.fixture
def pahos() -> Iterator[Wire]:
    wire = Wire(new_client(paho.Client))
    yield wire
    wire.close()


def buffer_empty(client: paho.Client) -> bool:
    assert isinstance(client, FastClient)
    return client._read_pos >= len(client._read_buf)


def test_messages_arrive_as_paho_decodes_them(ours: Wire, pahos: Wire) -> None:
    stream = [
        publish("plant/m1/temperature", b'{"value": 1.5}', qos=1, mid=17),
        publish("plant/m1/temperature", b"2.5", qos=0),
        publish("plant/m1/temperature", b"", qos=1, mid=65535),
        publish("plant/kühler-1/drück", "3.5 °C".encode(), qos=1, mid=3),
        publish("plant/m2", b'{"values": {}}', qos=1, mid=4, props=content_type("json")),
        publish("plant/m3", b"[" + b"1.0," * 9_000 + b"1.0]", qos=1, mid=5),  # > READ_CHUNK
        publish("plant/m1/temperature", b"4.5", qos=1, mid=6),
    ]
    for wire in (ours, pahos):
        wire.send(b"".join(stream))
        wire.read_all(len(stream))
    assert ours.got == pahos.got
    assert len(ours.got) == len(stream)
    # Only the message with properties took paho's way.
    assert ours.paths == ["deliver"] * 4 + ["paho"] + ["deliver"] * 2


def test_one_pass_reads_every_packet_the_socket_has(ours: Wire, pahos: Wire) -> None:
    for wire in (ours, pahos):
        wire.send(b"".join(readings(100)))
    assert ours.read_all(100) == 1
    assert buffer_empty(ours.client)
    assert not ours.socket_readable()
    assert pahos.read_all(100) == 100  # paho alone: a packet a pass
    assert ours.got == pahos.got


def test_a_packet_split_across_reads_is_delivered_once_complete(ours: Wire) -> None:
    stream = b"".join(readings(3))
    cut = len(stream) - 10
    ours.send(stream[:cut])
    assert ours.client.loop_read() == paho.MQTT_ERR_SUCCESS
    assert [m[2] for m in ours.got] == [1, 2]
    assert buffer_empty(ours.client)
    ours.send(stream[cut:])
    assert ours.client.loop_read() == paho.MQTT_ERR_SUCCESS
    assert [m[2] for m in ours.got] == [1, 2, 3]


def test_a_pass_ends_after_its_packets_with_the_buffer_empty(
    ours: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paho_client, "READ_CHUNK", 200)  # two or three messages a read
    monkeypatch.setattr(paho_client, "PACKETS_PER_PASS", 5)
    ours.send(b"".join(readings(100)))
    assert ours.client.loop_read() == paho.MQTT_ERR_SUCCESS
    first_pass = len(ours.got)
    # It stopped reading the socket, and left nothing in its buffer that select() cannot see.
    assert 5 <= first_pass < 10
    assert buffer_empty(ours.client)
    assert ours.socket_readable()
    ours.read_all(100)
    assert [m[2] for m in ours.got] == list(range(1, 101))


def test_a_new_connection_starts_with_an_empty_buffer(ours: Wire) -> None:
    client = ours.client
    assert isinstance(client, FastClient)
    ours.send(b"old connection")
    assert client._sock_recv(3) == b"old"  # the rest waits in the buffer
    new_broker, new_ours = socket.socketpair()
    new_ours.setblocking(False)
    old = client._sock
    client._sock = new_ours
    try:
        new_broker.sendall(b"new")
        assert client._sock_recv(3) == b"new"
    finally:
        client._sock = old
        new_ours.close()
        new_broker.close()

"""A cycle's acknowledgements wake paho's network thread once, not once per message.

paho writes a byte to a socket pair for every packet it queues (to break its thread out of
select()); each write gives the GIL up, which under load costs a hand-back to paho's thread.
Inside `together()` packets are queued without it, and one byte at the end wakes the thread.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from paho.mqtt.enums import CallbackAPIVersion

from service.transport.paho_client import FastClient

PUBACK = 0x40


@pytest.fixture
def client() -> Iterator[FastClient]:
    """A client with the socket pair its network thread would have (none is started)."""
    c = FastClient(callback_api_version=CallbackAPIVersion.VERSION2, manual_ack=True)
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    c._sockpairR, c._sockpairW = reader, writer
    yield c
    reader.close()
    writer.close()


def wakeups(c: FastClient) -> int:
    assert c._sockpairR is not None
    try:
        return len(c._sockpairR.recv(65536))
    except BlockingIOError:
        return 0


def queued_acks(c: FastClient) -> list[int]:
    return [p["mid"] for p in c._out_packet if p["command"] == PUBACK]


def test_acks_one_by_one_wake_paho_once_each(client: FastClient) -> None:
    for mid in range(1, 51):
        client.ack(mid, 1)
    assert wakeups(client) == 50
    assert queued_acks(client) == list(range(1, 51))


def test_acks_together_wake_paho_once(client: FastClient) -> None:
    with client.together():
        for mid in range(1, 51):
            client.ack(mid, 1)
        assert wakeups(client) == 0
    assert wakeups(client) == 1
    # Queued as paho queues them: the same packets, in the same order.
    assert queued_acks(client) == list(range(1, 51))
    together = [dict(p) for p in client._out_packet]
    client._out_packet.clear()
    for mid in range(1, 51):
        client.ack(mid, 1)
    assert together == [dict(p) for p in client._out_packet]


def test_only_the_thread_inside_together_is_held(client: FastClient) -> None:
    with client.together():
        other = threading.Thread(target=client.ack, args=(7, 1))
        other.start()
        other.join()
        assert wakeups(client) == 1  # the other thread's packet woke paho as usual
        client.ack(8, 1)
    assert wakeups(client) == 1
    assert queued_acks(client) == [7, 8]

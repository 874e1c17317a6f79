"""`FastClient`: paho's client with fewer system calls, through paho's internals."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

# Bytes one read asks the kernel for: about 200 per-sensor messages.
READ_CHUNK = 16_384
# Packets one pass of paho's loop reads before it goes back to write (acks, alerts) and
# ping: a pass costs up to about 20 ms of a flood, which alerts published meanwhile wait.
PACKETS_PER_PASS = 512


class FastClient(paho.Client):
    """paho's client, with fewer system calls: every system call gives the GIL up, and
    under load winning it back from the pipeline's thread costs up to the switch interval.

    Writes: paho writes a byte to a socket pair for every packet it queues, to wake its
    thread's select(): 50 such writes took 10.8 ms beside a busy Python thread against
    0.18 ms alone, and a pipeline cycle acknowledges hundreds of messages. Packets queued by
    a thread inside `together()` are queued as paho queues them, less the write; one write
    at its end wakes paho's thread for all of them.

    Reads: paho reads a packet with three recv() calls (its command byte, its length byte,
    the rest) and goes back to select() after each packet: four system calls a message.
    Here recv() fills a buffer of `READ_CHUNK` bytes that paho's reads are served from, and
    a pass of the loop reads every packet the buffer and the socket have (at most
    `PACKETS_PER_PASS`, then the buffer's rest without reading more), so that it ends with
    the buffer empty: select() then sees all that is left to read.

    Messages: a PUBLISH of QoS 0 or 1 without properties (what sensors send) goes straight
    to `deliver(topic, payload, mid, qos)`. paho decoded it into an MQTTMessage (struct
    formats built per message, a Properties object, a debug log call, the topic matcher):
    22 us of the GIL a message. Others take paho's way, to `on_message`.

    Depends on paho's `_packet_queue`, `_sock_recv`, `loop_read` and `_handle_publish`
    (paho-mqtt 2.2, pinned in constraints.txt): tests/unit/test_mqtt_wakeups.py and
    test_mqtt_reads.py fail if paho stops reading, decoding or queueing through them; and
    on `_thread` and `_thread_terminate` for `stop_loop`."""

    deliver: Callable[[str, bytes, int, int], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._holding = threading.local()
        self._read_sock: object = None  # the socket the buffer's bytes came from
        self._read_buf = b""
        self._read_pos = 0
        self._refill = True
        self.connect_error: OSError | None = None  # of the last failed connection attempt

    def reconnect(self) -> MQTTErrorCode:
        """paho's `reconnect`, keeping why it failed: paho's `on_connect_fail` is called
        without the exception (service.transport.connect_errors names its cause)."""
        try:
            return super().reconnect()
        except OSError as exc:
            self.connect_error = exc
            raise

    def network_thread(self) -> threading.Thread | None:
        """paho's network thread, while it runs: paho sets `_thread` to None when it ends."""
        return self._thread

    def stop_loop(self, deadline: float) -> bool:
        """paho's `loop_stop`, but joining the network thread only until `deadline` (a
        `time.monotonic()` time): whether the thread has ended."""
        thread = self._thread
        if thread is None:
            return True
        self._thread_terminate = True
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        return not thread.is_alive()

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        self._refill = True
        try:
            packets = 0
            while self._sock is not None:
                rc = self._packet_read()
                if rc > 0:
                    return self._loop_rc_handle(rc)
                # AGAIN with bytes buffered: paho paused a large packet, not the socket.
                if rc == MQTTErrorCode.MQTT_ERR_AGAIN and self._read_pos >= len(self._read_buf):
                    return MQTTErrorCode.MQTT_ERR_SUCCESS
                packets += 1
                if packets >= PACKETS_PER_PASS:
                    self._refill = False
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        finally:
            self._refill = True

    def _handle_publish(self) -> MQTTErrorCode:
        deliver = self.deliver
        header: int = self._in_packet["command"]
        packet: bytearray = self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        size = len(packet)
        if deliver is None or qos > 1 or size < 2 or self._protocol != paho.MQTTv5:
            return super()._handle_publish()
        topic_end = 2 + ((packet[0] << 8) | packet[1])
        at = topic_end + 2 * qos  # the packet identifier, with QoS 1
        # A property length other than 0 (or none at all, malformed): paho's way.
        if at >= size or packet[at] != 0:
            return super()._handle_publish()
        mid = (packet[topic_end] << 8) | packet[topic_end + 1] if qos else 0
        try:
            topic = packet[2:topic_end].decode()
        except UnicodeDecodeError:
            return super()._handle_publish()
        with self._in_callback_mutex:
            deliver(topic, bytes(packet[at + 1 :]), mid, qos)
        if qos and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._read_sock is not self._sock:  # a new connection: nothing of the old one
            self._read_sock, self._read_buf, self._read_pos = self._sock, b"", 0
        buf, pos = self._read_buf, self._read_pos
        if pos >= len(buf):
            if not self._refill:
                raise BlockingIOError
            buf = self._read_buf = super()._sock_recv(max(bufsize, READ_CHUNK))
            pos = self._read_pos = 0
            if not buf:
                return buf  # closed by the broker
        self._read_pos = pos + bufsize
        return buf[pos : pos + bufsize]

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        self._holding.on = True
        try:
            yield
        finally:
            self._holding.on = False
            wake = self._sockpairW
            if wake is not None:
                with contextlib.suppress(OSError):  # full (paho is awake anyway) or closed
                    wake.send(b"0")

    def _packet_queue(
        self,
        command: int,
        packet: bytes | bytearray,
        mid: int,
        qos: int,
        info: paho.MQTTMessageInfo | None = None,
    ) -> MQTTErrorCode:
        if not getattr(self._holding, "on", False):
            return super()._packet_queue(command, packet, mid, qos, info)
        self._out_packet.append(
            {
                "command": command,
                "mid": mid,
                "qos": qos,
                "pos": 0,
                "to_process": len(packet),
                "packet": packet,
                "info": info,
            }
        )
        return MQTTErrorCode.MQTT_ERR_SUCCESS

"""The only module that imports paho: connect, subscribe, receive, publish.

Callbacks run on paho's network thread. They only translate and hand over, and they never
let an exception escape: one escaping exception kills paho's thread while `is_connected()`
keeps saying True, and the daemon would go blind without a sign.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from service.core.config import MqttSettings
from service.core.metrics import Metrics
from service.core.threads import InjectedFaultError
from service.stream.publish import OFFLINE, ONLINE

log = structlog.get_logger(__name__)

Ack = Callable[[], None]
# topic, payload, receive time, and the message's acknowledgement: the handler calls it
# exactly once, when the message's readings are processed (or at once, if there are none).
MessageHandler = Callable[[str, bytes, float, Ack], None]


class AckOrder:
    """Sends PUBACKs once messages are processed, in the order the messages came.

    MQTT 5 (4.6) wants PUBACKs in the order of the PUBLISHes, while a message with readings
    is done only when the pipeline has taken them in, and one without is done at once. A
    message is acknowledged when it and every message before it are done, so an unprocessed
    reading is never acknowledged: after a crash the broker (persistent session) delivers
    it again. A new connection starts a new queue: the broker re-sends what was not
    acknowledged, so acks of the old connection are dropped.

    Only paho's thread tracks (and resets, on connect), so tracking needs no lock: a deque
    appends atomically. Acks come from either thread and take the lock, so that two threads
    cannot reorder PUBACKs. Each message is `[mid, qos, done]`, a list: a message costs
    this on paho's thread, where every microsecond counts at tens of thousands a second.
    """

    def __init__(self, send: Callable[[int, int], object]) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._pending: deque[list[int]] = deque()  # [mid, qos, done], in arrival order

    def reset(self) -> None:
        with self._lock:
            self._pending = deque()

    def track(self, mid: int, qos: int) -> Ack:
        """An acknowledgement to call once the message is processed."""
        if qos == 0:
            return _nothing
        entry = [mid, qos, 0]
        pending = self._pending
        pending.append(entry)
        return lambda: self._done(entry, pending)

    def _done(self, entry: list[int], pending: deque[list[int]]) -> None:
        with self._lock:
            entry[2] = 1
            if pending is not self._pending:
                return  # of a connection before the current one
            while pending and pending[0][2]:
                mid, qos, _ = pending.popleft()
                # Sent under the lock so that two threads cannot reorder them; paho queues.
                self._send(mid, qos)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)


def _nothing() -> None:
    return None


# Bytes one read asks the kernel for: about 200 per-sensor messages.
READ_CHUNK = 16_384
# Packets one pass of paho's loop reads before it goes back to write (acks, alerts) and
# ping: a pass costs up to about 20 ms of a flood, which alerts published meanwhile wait.
PACKETS_PER_PASS = 512


class _Client(paho.Client):
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
    test_mqtt_reads.py fail if paho stops reading, decoding or queueing through them."""

    deliver: Callable[[str, bytes, int, int], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._holding = threading.local()
        self._read_sock: object = None  # the socket the buffer's bytes came from
        self._read_buf = b""
        self._read_pos = 0
        self._refill = True

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


class MqttClient:
    """One MQTT 5 connection: subscriptions renewed on every connect, a retained last will
    of `offline`, reconnects with backoff, and thread-safe publishing."""

    def __init__(
        self,
        settings: MqttSettings,
        subscriptions: list[str],
        status_topic: str,
        on_message: MessageHandler,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.subscriptions = subscriptions
        self.status_topic = status_topic
        self.handler = on_message
        self.metrics = metrics
        self.connected = threading.Event()
        # Set by the broker's SUBACK granting every subscription: until then readings
        # published are not routed to us, so the daemon is not ready.
        self.subscribed = threading.Event()
        self.last_error: str | None = None
        self.fault_armed = False  # test-only: see service.core.threads.FAULT_ENV
        self._started = False
        self._stopping = False
        self._death_logged = False
        self.failed_attempts = 0
        self._client = self._build_client()
        self.acks = AckOrder(self._client.ack)

    def _build_client(self) -> _Client:
        s = self.settings
        client = _Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        client.will_set(self.status_topic, OFFLINE, qos=1, retain=True)
        password = s.resolved_password()
        if s.username is not None or password is not None:
            client.username_pw_set(s.username, password)
        if s.tls:
            client.tls_set(
                ca_certs=str(s.ca_file) if s.ca_file else None,
                certfile=str(s.cert_file) if s.cert_file else None,
                keyfile=str(s.key_file) if s.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        # paho annotates int but computes in float; int() would turn 0.5 into 0, and a zero
        # delay doubles to zero forever: a reconnect storm against a broker that is down.
        client.reconnect_delay_set(
            min_delay=s.reconnect_min,  # type: ignore[arg-type]
            max_delay=max(s.reconnect_max, s.reconnect_min),  # type: ignore[arg-type]
        )
        # Unlimited client-side queue: alerts published while the broker is away wait here.
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.deliver = self._deliver
        return client

    def start(self) -> None:
        s = self.settings
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.session_expiry
        log.info("mqtt_connecting", host=s.host, port=s.port, tls=s.tls, client_id=s.client_id)
        self._client.connect_async(
            s.host, s.port, keepalive=s.keepalive, clean_start=s.clean_start, properties=props
        )
        self._client.loop_start()
        self._started = True

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self._client.publish(topic, payload, qos=qos, retain=retain)

    def together(self) -> contextlib.AbstractContextManager[None]:
        """Acks and publishes of this thread in the body go out with one wake-up of paho's
        network thread, at its end."""
        return self._client.together()

    def pause_input(self) -> None:
        """Stop taking readings (first step of shutdown); the session keeps what follows."""
        self.subscribed.clear()
        if self.connected.is_set():
            self._client.unsubscribe(self.subscriptions)

    def stop(self, timeout: float = 5.0) -> None:
        """Publish `offline` (after every alert queued before it) and disconnect."""
        self._stopping = True
        # With paho's thread dead nothing would send it: waiting would only delay the exit.
        if self.connected.is_set() and self.network_thread_alive():
            info = self._client.publish(self.status_topic, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("mqtt_offline_not_published", error=str(exc))
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()
        self.metrics.broker_connected.set(0)

    def network_thread_alive(self) -> bool:
        """Whether paho's network thread runs. One thread serves every reconnect; paho sets
        `_thread` to None when it ends, and an exception escaping a callback ends it."""
        thread = self._client._thread
        alive = thread is not None and thread.is_alive()
        if not alive and self._started and not self._stopping and not self._death_logged:
            self._death_logged = True
            self.metrics.thread_failures.labels(thread="mqtt").inc()
            log.error("thread_failed", thread="mqtt", detail="paho network thread ended")
        return alive

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            if reason_code.is_failure:
                self.last_error = str(reason_code)
                # 0x86 bad user name or password, 0x87 not authorized
                auth = reason_code.value in (0x86, 0x87)
                log.error(
                    "mqtt_connect_refused",
                    reason=str(reason_code),
                    host=self.settings.host,
                    port=self.settings.port,
                    username=self.settings.username,
                    hint="check mqtt.username and the password (file) and the broker ACL"
                    if auth
                    else None,
                    retry="with backoff",
                )
                return
            self.acks.reset()
            qos = int(self.settings.qos)
            client.subscribe([(t, qos) for t in self.subscriptions])
            client.publish(self.status_topic, ONLINE, qos=1, retain=True)
            self.connected.set()
            self.last_error = None
            self.failed_attempts = 0
            self.metrics.broker_connected.set(1)
            log.info(
                "mqtt_connected",
                session_present=flags.session_present,
                subscriptions=self.subscriptions,
            )
        except Exception:
            self.metrics.callback_errors.inc()
            log.exception("mqtt_on_connect_failed")

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        try:
            refused = [str(rc) for rc in reason_codes if rc.is_failure]
            if refused:
                self.last_error = f"subscription refused: {', '.join(refused)}"
                log.error("mqtt_subscribe_refused", reasons=refused, topics=self.subscriptions)
                return
            self.subscribed.set()
        except Exception:
            self.metrics.callback_errors.inc()
            log.exception("mqtt_on_subscribe_failed")

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            self.connected.clear()
            self.subscribed.clear()
            self.metrics.broker_connected.set(0)
            log.warning("mqtt_disconnected", reason=str(reason_code))
        except Exception:
            self.metrics.callback_errors.inc()
            log.exception("mqtt_on_disconnect_failed")

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        """The TCP/TLS connection could not be made; paho retries with its backoff."""
        try:
            self.failed_attempts += 1
            if self.last_error is None or self.last_error.startswith("connection failed"):
                self.last_error = "connection failed"
            log.warning(
                "mqtt_connect_failed",
                host=self.settings.host,
                port=self.settings.port,
                attempt=self.failed_attempts,
            )
        except Exception:
            self.metrics.callback_errors.inc()
            log.exception("mqtt_on_connect_fail_failed")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._deliver(message.topic, bytes(message.payload), message.mid, message.qos)

    def _deliver(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        if self.fault_armed:
            raise InjectedFaultError("AEMON_TEST_FAULT=mqtt")
        ack = self.acks.track(mid, qos)
        try:
            self.handler(topic, payload, time.time(), ack)
        except Exception:
            ack()
            self.metrics.callback_errors.inc()
            log.exception("mqtt_on_message_failed", topic=topic)

"""Where simulated and replayed readings go: an MQTT broker (paho-mqtt 2.x, MQTT 5) or a
text stream, paced against the wall clock at a speed factor. The only paho import of the
simulators.
"""

from __future__ import annotations

import collections
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TextIO

import orjson
import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

log = structlog.get_logger("simulators.publish")

TRUTH_TOPIC = "sim/truth/{machine}"
# Seconds of silence before the client pings; a broker drops a client silent for 1.5 times
# this, which bounds how long the demo may hold (SIGSTOP) the plant.
KEEPALIVE_S = 60


class Sink(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int) -> None: ...

    def close(self) -> None: ...


def machine_payload(ts: float, values: dict[str, float]) -> bytes:
    """`{"ts": ..., "values": {...}}` for `plant/<machine>`."""
    return orjson.dumps({"ts": ts, "values": values})


def sensor_payload(ts: float, value: float) -> bytes:
    """`{"ts": ..., "value": ...}` for `plant/<machine>/<sensor>`."""
    return orjson.dumps({"ts": ts, "value": value})


class StdoutSink:
    """`topic payload` lines on a text stream: a dry run, or a pipe into other tools."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self.out.write(f"{topic} {payload.decode()}\n")

    def close(self) -> None:
        self.out.flush()


class MqttSink:
    """One MQTT 5 connection that publishes in order, with at most `max_pending` messages
    not yet handed to the broker: publishing as fast as possible stays in bounded memory."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str = "",
        *,
        timeout: float = 10.0,
        max_pending: int = 5000,
        will: tuple[str, bytes] | None = None,
        commands: tuple[str, Callable[[bytes], None]] | None = None,
    ) -> None:
        """`will`: (topic, payload) the broker publishes if the connection is lost;
        `commands`: (topic filter, callback) for messages to this publisher."""
        self.timeout, self.max_pending = timeout, max_pending
        self.commands = commands
        self.pending: collections.deque[paho.MQTTMessageInfo] = collections.deque()
        self.failed = 0
        self.connected = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1)
        if commands is not None:
            self.client.on_message = lambda c, u, message: commands[1](bytes(message.payload))
        self.client.connect(host, port, keepalive=KEEPALIVE_S)  # raises when nothing listens
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.client.loop_stop()
            raise ConnectionError(f"MQTT broker {host}:{port} did not accept us in {timeout} s")
        log.info("mqtt_connected", host=host, port=port, client_id=client_id)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        # Runs on paho's thread: only flag it, an exception here would kill that thread.
        if not reason.is_failure:
            if self.commands is not None:
                client.subscribe(self.commands[0], qos=1)
            self.connected.set()

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self.connected.clear()

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        if info.rc != paho.MQTT_ERR_SUCCESS and qos == 0:
            self.failed += 1  # QoS 0 while disconnected is lost; QoS 1 is queued by paho
            return
        self.pending.append(info)
        while self.pending and self.pending[0].is_published():
            self.pending.popleft()
        while len(self.pending) > self.max_pending:  # backpressure: wait for the oldest
            self._wait(self.pending.popleft(), self.timeout)

    def _wait(self, info: paho.MQTTMessageInfo, timeout: float) -> None:
        # Raises when paho dropped the message from its queue: counted as lost below.
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(max(timeout, 0.0))
        if not info.is_published():
            self.failed += 1

    def flush(self) -> None:
        """Waits up to `timeout` in all for what is queued to reach the broker."""
        deadline = time.monotonic() + self.timeout
        while self.pending:
            self._wait(self.pending.popleft(), deadline - time.monotonic())

    def close(self) -> None:
        """Waits for what is queued (`flush`), then disconnects."""
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()
        if self.failed:
            log.warning("mqtt_messages_lost", count=self.failed)


def open_sink(args: Any) -> Sink:
    """The sink the CLI options name: `--stdout`, else the broker at `--host`/`--port`."""
    if args.stdout:
        return StdoutSink(sys.stdout)
    return MqttSink(args.host, args.port, args.client_id)


# A publisher this far behind its pace was held up (stopped with SIGSTOP while the demo's
# models are fitted, a suspended laptop): it goes on at its pace from where it is instead
# of sending everything the pause held back as one burst.
MAX_LATE_S = 2.0


class Pacer:
    """Holds each message until its event time, scaled by `speed`, has come on the wall
    clock; `speed` 0 never waits. Deadlines are absolute, so waits do not drift; a message
    more than `MAX_LATE_S` late starts the pace again from itself."""

    def __init__(self, speed: float, stop: threading.Event | None = None) -> None:
        if speed < 0:
            raise ValueError("speed is >= 0 (0: as fast as possible)")
        self.speed = speed
        self.stop = stop or threading.Event()
        self.origin: float | None = None
        self.wall0 = 0.0

    def wait(self, event_ts: float) -> bool:
        """False as soon as `stop` is set; True once `event_ts` is due."""
        if self.origin is None:
            self.origin, self.wall0 = event_ts, time.monotonic()
        if self.speed > 0:
            now = time.monotonic()
            delay = self.wall0 + (event_ts - self.origin) / self.speed - now
            if delay < -MAX_LATE_S:
                self.origin, self.wall0 = event_ts, now
            elif delay > 0:
                return not self.stop.wait(delay)
        return not self.stop.is_set()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event that SIGTERM and SIGINT set (a clean stop: the queue is flushed), with the
    previous handlers back afterwards. Off the main thread signals cannot be caught."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def configure_logging() -> None:
    """Log lines to stderr (stdout may carry `--stdout` data), unless the host program
    (the demo, a test) has configured structlog already."""
    if not structlog.is_configured():
        # sys.stderr looked up at each use: it may be swapped (pytest's capture does).
        structlog.configure(logger_factory=lambda *_: structlog.PrintLogger(sys.stderr))

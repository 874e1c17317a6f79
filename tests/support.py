"""Test harness: a real Mosquitto, the daemon as a process, an MQTT subscriber.

Every process is started on 127.0.0.1 with a free port and a config file of its own, and
stopped by its own PID. Waits poll a condition with a deadline; nothing sleeps and hopes.
The processes themselves (Mosquitto, the daemon, Prometheus) are `simulators.stack`'s, which
the demo runs too.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from simulators.clients import Subscriber, free_port, metric_value, port_open, wait_for
from simulators.stack import (
    REPO,
    Daemon,
    Mosquitto,
    NatsServer,
    ProcessExitedError,
    find_binary,
    toml_value,
    write_toml,
)

__all__ = [
    "FAST_CONFIG",
    "REPO",
    "Daemon",
    "Mosquitto",
    "NatsServer",
    "ProcessExitedError",
    "Publisher",
    "Relay",
    "Subscriber",
    "find_binary",
    "free_port",
    "metric_value",
    "port_open",
    "running",
    "toml_value",
    "wait_until",
    "write_toml",
]

T = TypeVar("T")


# Small enough to learn in seconds, through the production code paths: 250 learning windows
# of 20 one-second steps, after 5 s of discovery.
FAST_CONFIG: dict[str, dict[str, Any]] = {
    "window": {"length": 20, "stride": 1, "max_stale": 5.0, "lateness": 2.0},
    "learning": {"windows": 250},
    "discovery": {"period": 5.0},
    "model": {"epochs": 60},
    "alert": {"k": 3, "n": 5, "m": 10},
    "ingest": {"max_payload_bytes": 4096},
}


def wait_until(
    condition: Callable[[], T], timeout: float, what: str = "condition", interval: float = 0.05
) -> T:
    """Polls `condition` until it returns something truthy; fails after `timeout` seconds."""
    try:
        return wait_for(condition, timeout, what, interval)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


class Publisher:
    """A QoS 1 publisher that waits for the broker's acknowledgement of everything sent."""

    def __init__(self, port: int, protocol: paho.MQTTProtocolVersion = paho.MQTTv5) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self._last: paho.MQTTMessageInfo | None = None

    def send(self, topic: str, payload: bytes | str | dict[str, Any], qos: int = 1) -> None:
        if isinstance(payload, dict):
            payload = orjson.dumps(payload)
        self._last = self.client.publish(topic, payload, qos=qos)

    def flush(self, timeout: float = 60) -> None:
        if self._last is not None:
            self._last.wait_for_publish(timeout)

    def close(self) -> None:
        self.flush()
        self.client.loop_stop()
        self.client.disconnect()


@contextlib.contextmanager
def running(*things: Any) -> Iterator[None]:
    """Stops (by PID) whatever was started, even when the test fails."""
    try:
        yield
    finally:
        for thing in reversed(things):
            with contextlib.suppress(Exception):
                thing.stop() if not isinstance(thing, Subscriber | Publisher) else thing.close()


class Relay:
    """A TCP relay on a free loopback port to a broker's port, for the daemon to connect
    through. `hold()` drops what the client sends (its publishes never reach the broker, as
    if the broker had died before reading them) while still delivering what the broker
    sends; `release()` forwards again. A connection ends when either side ends."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.holding = threading.Event()
        self.dropped = 0
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        self.holding.set()

    def release(self) -> None:
        self.holding.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst, outbound in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, outbound), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        try:
            while data := src.recv(65536):
                if outbound and self.holding.is_set():
                    self.dropped += len(data)
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self.listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()

"""Clients of the local stack: free ports, waits with a deadline, HTTP, /metrics and an MQTT
subscriber that collects what it receives. Everything talks to 127.0.0.1 only."""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

T = TypeVar("T")


def free_port() -> int:
    """A loopback port free now. Under pytest-xdist each worker (and what it starts) takes
    only ports whose half has its own residue modulo the worker count, so two workers never
    pick the same port between one's check and its server's bind. The parity stays the one
    bind() handed (Linux: odd), since connect() takes its source ports from the other half
    (even): a client polling a server not listening yet could otherwise be handed the very
    port it dials, connect to itself and read its own request back."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    share = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % workers
    while True:
        port = _bound_port(0)
        if workers > 1:
            half = port // 2
            port = _bound_port(2 * (half - half % workers + share) + port % 2)
        if port:
            return port


def _bound_port(port: int) -> int:
    """The port a loopback socket bound to `port` got (0: any), or 0 if it is taken."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return 0
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(
    condition: Callable[[], T], timeout: float, what: str = "condition", interval: float = 0.05
) -> T:
    """Polls `condition` until it returns something truthy; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """Status and body; an HTTP error status is an answer too, not an exception."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` (Prometheus text format) whose labels match."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@dataclass
class Subscriber:
    """Collects every message on `topics` (payloads as bytes)."""

    port: int
    topics: list[str]
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in self.topics])
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            self.close()
            raise TimeoutError(f"MQTT subscription to {self.topics} not acknowledged in 10 s")

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def json_on(self, topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(p) for p in self.on(topic)]

    def json_under(self, prefix: str) -> list[dict[str, Any]]:
        """Decoded payloads of every topic that starts with `prefix`, in arrival order."""
        with self.lock:
            payloads = [p for t, p, _ in self.messages if t.startswith(prefix)]
        return [orjson.loads(p) for p in payloads]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

"""Test harness: a real Mosquitto, the daemon as a process, an MQTT subscriber.

Every process is started on 127.0.0.1 with a free port and a config file of its own, and
stopped by its own PID. Waits poll a condition with a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    condition: Callable[[], T], timeout: float, what: str = "condition", interval: float = 0.05
) -> T:
    """Polls `condition` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def find_binary(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )
    if found is None:
        raise RuntimeError(f"{name} is not installed: run `make install`")
    return found


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Mosquitto:
    """A broker of the test's own: `stop`, `kill` and `start` again work on its PID."""

    def __init__(self, workdir: Path, extra_config: str = "", persistence: bool = False) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            # The default (1000) silently drops bursts for a slow client: tests send fast.
            "max_queued_messages 1000000",
            "max_inflight_messages 0",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {workdir}/",
            "log_type error",
            "log_type warning",
            extra_config,
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        log = (self.workdir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen(
            [find_binary("mosquitto"), "-c", str(self.config)], stdout=log, stderr=log
        )
        wait_until(lambda: port_open(self.port), 10, "mosquitto to listen")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(10)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)


@dataclass
class Subscriber:
    """Collects every message on `topics` (payloads decoded as text)."""

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
        assert self.subscribed.wait(10), "subscription not acknowledged"

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def json_on(self, topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(p) for p in self.on(topic)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Publisher:
    """A QoS 1 publisher that waits for the broker's acknowledgement of everything sent."""

    def __init__(self, port: int) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
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


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_toml(path: Path, config: dict[str, dict[str, Any]]) -> Path:
    lines: list[str] = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(v)}" for key, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class Daemon:
    """`aemon run` as a process of the test's own."""

    def __init__(self, workdir: Path, broker_port: int, config: dict[str, dict[str, Any]]):
        self.workdir = workdir
        self.http_port = free_port()
        base: dict[str, dict[str, Any]] = {
            "mqtt": {
                "host": "127.0.0.1",
                "port": broker_port,
                "client_id": f"aemon-{self.http_port}",
            },
            "http": {"host": "127.0.0.1", "port": self.http_port},
            "state": {"dir": str(workdir / "state")},
            "log": {"format": "json", "level": "info"},
        }
        for section, values in config.items():
            base.setdefault(section, {}).update(values)
        self.config_path = write_toml(workdir / "aemon.toml", base)
        self.log_path = workdir / "aemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> Daemon:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=log,
            env={**os.environ, **(env or {})},
            cwd=REPO,
        )
        wait_until(self.healthy, 60, "the daemon's /healthz")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def get(self, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.logs()}")
        with contextlib.suppress(OSError):
            return self.get("/healthz")[0] == 200
        return False

    def ready(self) -> bool:
        with contextlib.suppress(OSError):
            return self.get("/readyz")[0] == 200
        return False

    def machines(self) -> dict[str, dict[str, Any]]:
        status, body = self.get("/api/machines")
        assert status == 200
        return {m["machine"]: m for m in orjson.loads(body)}

    def metrics(self) -> str:
        return self.get("/metrics")[1].decode()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics (0 when it is absent)."""
        return metric_value(self.metrics(), name, **labels)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout)


def metric_value(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


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

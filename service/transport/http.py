"""One port: `/metrics`, `/healthz`, `/readyz`, `/api/machines` and a status page at `/`."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.registry import RestrictedRegistry

from service.core.metrics import Metrics
from service.core.threads import Worker

Probe = Callable[[], dict[str, Any]]
# `/api/machines`: one record a machine (service.core.types.MachineRecord).
Machines = Callable[[], Sequence[Mapping[str, Any]]]
# POST /api/machines/<machine>/commands: (machine, body, Authorization header) -> (status,
# JSON body). Bodies larger than this are refused unread.
Commands = Callable[[str, bytes, str | None], tuple[int, dict[str, Any]]]
MAX_BODY = 4096
_COMMANDS_PATH = re.compile(r"^/api/machines/([^/]+)/commands$")


class HttpServer(Worker):
    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        health: Probe,
        ready: Probe,
        machines: Machines,
        commands: Commands | None = None,
    ) -> None:
        super().__init__("http", metrics)
        handler = _handler_class(metrics.registry, health, ready, machines, commands)
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def work(self) -> None:
        self.server.serve_forever(poll_interval=0.2)

    def stop(self, deadline: float) -> None:
        """Stop serving and close the port, the thread ended by `deadline` (a
        `time.monotonic()` time). `shutdown()` returns within a poll interval of the
        serving loop; it is not asked of a thread that is not serving (it would wait for
        ever)."""
        if self.is_alive():
            self.server.shutdown()
            self.join(max(0.0, deadline - time.monotonic()))
        self.server.server_close()


def _handler_class(
    registry: CollectorRegistry,
    health: Probe,
    ready: Probe,
    machines: Machines,
    commands: Commands | None,
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "aemon"

        def do_POST(self) -> None:
            path = self.path.partition("?")[0]
            match = _COMMANDS_PATH.match(path)
            if match is None or commands is None:
                self._send(404, "text/plain", b"not found\n")
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                self._send(413 if length else 411, "text/plain", b"a command is small JSON\n")
                return
            body = self.rfile.read(length)
            machine = unquote(match.group(1))
            status, answer = commands(machine, body, self.headers.get("Authorization"))
            self._send(status, "application/json", orjson.dumps(answer))

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(selected(registry, query)))
            elif path == "/healthz":
                self._probe(health(), "healthy")
            elif path == "/readyz":
                self._probe(ready(), "ready")
            elif path == "/api/machines":
                self._send(200, "application/json", orjson.dumps(machines()))
            elif path == "/":
                page = status_page(health(), ready(), machines())
                self._send(200, "text/html; charset=utf-8", page.encode())
            else:
                self._send(404, "text/plain", b"not found\n")

        def _probe(self, report: dict[str, Any], key: str) -> None:
            status = 200 if report[key] else 503
            self._send(status, "application/json", orjson.dumps(report))

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Scrapes every few seconds would flood the log; errors still reach stderr.
            return

    return Handler


def selected(registry: CollectorRegistry, query: str) -> CollectorRegistry | RestrictedRegistry:
    """`/metrics?name[]=a&name[]=b` renders only those metrics, as prometheus_client's own
    handlers do: a full scrape of 1,000 machines takes the GIL for tens of milliseconds, a
    poll of a few counters far less."""
    names = parse_qs(query).get("name[]")
    if not names:
        return registry
    return registry.restricted_registry(names)


def status_page(
    health: dict[str, Any], ready: dict[str, Any], machines: Sequence[Mapping[str, Any]]
) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            value = f"{value:.4g}"
        return f"<td>{html.escape(str(value if value is not None else '-'))}</td>"

    columns = [
        "machine",
        "state",
        "alert",
        "acknowledged_by",
        "score",
        "threshold",
        "model_version",
        "sensors",
    ]
    rows = "".join(
        "<tr>"
        + "".join(cell(m[c] if c != "sensors" else ", ".join(m[c])) for c in columns)
        + "</tr>"
        for m in machines
    )
    head = "".join(f"<th>{c}</th>" for c in columns)
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>aemon</title>"
        '<meta http-equiv="refresh" content="5">'
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left}</style>"
        "</head><body><h1>aemon</h1>"
        f"<p>healthy: {health['healthy']} &middot; ready: {ready['ready']} &middot; "
        f"broker connected: {ready['broker_connected']}</p>"
        f"<table><tr>{head}</tr>{rows}</table>"
        '<p><a href="/metrics">/metrics</a> &middot; <a href="/api/machines">/api/machines</a>'
        "</p></body></html>"
    )

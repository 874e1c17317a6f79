"""One port: `/metrics`, `/healthz`, `/readyz`, `/api/machines` (with each machine's detail
and history) and the status pages, `/` and `/machines/<machine>`: static files shipped in
the package (`service/transport/static/`) that read only the JSON API."""

from __future__ import annotations

import math
import re
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.registry import RestrictedRegistry

from service.core.metrics import Metrics
from service.core.threads import Turns, Unpaced, Worker
from service.transport.exposition import render

Probe = Callable[[], dict[str, Any]]
# `/api/machines`: one record a machine (service.core.types.MachineRecord).
Machines = Callable[[], Sequence[Mapping[str, Any]]]
# POST /api/machines/<machine>/commands: (machine, body, Authorization header) -> (status,
# JSON body). Bodies larger than this are refused unread.
Commands = Callable[[str, bytes, str | None], tuple[int, dict[str, Any]]]
MAX_BODY = 4096
_COMMANDS_PATH = re.compile(r"^/api/machines/([^/]+)/commands$")
_MACHINE_PATH = re.compile(r"^/api/machines/([^/]+)(/history)?$")
_PAGE_PATH = re.compile(r"^/machines/([^/]+)$")
_STATIC_PATH = re.compile(r"^/static/([A-Za-z0-9_.-]+)$")
# Bodies of the pages' JSON and files above this are gzipped for a client that accepts it:
# a 1,000-machine plant's /api/machines is half a megabyte, polled every 5 s.
GZIP_ABOVE = 16384
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}


@dataclass(frozen=True)
class MachinePages:
    """The JSON of one machine: `detail(machine)` for `/api/machines/<machine>` and
    `history(machine, since)` for `.../history?since=<epoch>`; None for an unknown one."""

    detail: Callable[[str], Mapping[str, Any] | None]
    history: Callable[[str, float], Mapping[str, Any] | None]


def static_files() -> dict[str, tuple[str, bytes]]:
    """The status pages' files, read once: name -> (content type, bytes)."""
    folder = resources.files("service.transport") / "static"
    files = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            files[entry.name] = (_TYPES[suffix], entry.read_bytes())
    return files


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
        pages: MachinePages | None = None,
        turns: Turns | None = None,
    ) -> None:
        """`turns`: with whom a /metrics render takes turns (`service.transport.exposition`)."""
        super().__init__("http", metrics)
        handler = _handler_class(
            metrics.registry, health, ready, machines, commands, pages, turns or Unpaced()
        )
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
    pages: MachinePages | None,
    turns: Turns,
) -> type[BaseHTTPRequestHandler]:
    static = static_files()

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
                self._send(200, CONTENT_TYPE_LATEST, render(selected(registry, query), turns))
            elif path == "/healthz":
                self._probe(health(), "healthy")
            elif path == "/readyz":
                self._probe(ready(), "ready")
            elif path == "/api/machines":
                self._send(200, "application/json", orjson.dumps(machines()), gzip=True)
            elif (match := _MACHINE_PATH.match(path)) and pages is not None:
                self._machine(unquote(match.group(1)), match.group(2) is not None, query)
            elif path == "/" or _PAGE_PATH.match(path):
                self._static("index.html" if path == "/" else "machine.html")
            elif match := _STATIC_PATH.match(path):
                self._static(match.group(1))
            else:
                self._send(404, "text/plain", b"not found\n")

        def _machine(self, machine: str, history: bool, query: str) -> None:
            assert pages is not None
            if history:
                since = parse_since(query)
                if since is None:
                    self._send(400, "text/plain", b"since: Unix seconds, a finite number\n")
                    return
                answer = pages.history(machine, since)
            else:
                answer = pages.detail(machine)
            if answer is None:
                self._send(404, "application/json", orjson.dumps({"error": "unknown machine"}))
                return
            self._send(200, "application/json", orjson.dumps(answer), gzip=True)

        def _static(self, name: str) -> None:
            if name not in static:
                self._send(404, "text/plain", b"not found\n")
                return
            content_type, body = static[name]
            self._send(200, content_type, body, gzip=True)

        def _probe(self, report: dict[str, Any], key: str) -> None:
            status = 200 if report[key] else 503
            self._send(status, "application/json", orjson.dumps(report))

        def _send(self, status: int, content_type: str, body: bytes, gzip: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            if gzip:
                self.send_header("Vary", "Accept-Encoding")
                if len(body) > GZIP_ABOVE and accepts_gzip(self.headers.get("Accept-Encoding")):
                    # zlib gives the GIL up while it compresses: the pipeline need not wait.
                    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
                    body = compressor.compress(body) + compressor.flush()
                    self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Scrapes every few seconds would flood the log; errors still reach stderr.
            return

    return Handler


def selected(registry: CollectorRegistry, query: str) -> CollectorRegistry | RestrictedRegistry:
    """`/metrics?name[]=a&name[]=b` renders only those metrics, as prometheus_client's own
    handlers do: a full scrape of 1,000 machines is a few hundred milliseconds of Python
    (rendered in turns, `service.transport.exposition`), a poll of a few counters far less."""
    names = parse_qs(query).get("name[]")
    if not names:
        return registry
    return registry.restricted_registry(names)


def parse_since(query: str) -> float | None:
    """`since=<epoch>` (Unix seconds) of a query, 0 when absent; None when not a finite
    number.

    >>> parse_since(""), parse_since("since=1700000000.5"), parse_since("since=x")
    (0.0, 1700000000.5, None)
    >>> parse_since("since=nan") is None, parse_since("since=1&since=2") is None
    (True, True)
    """
    values = parse_qs(query, keep_blank_values=True).get("since")
    if values is None:
        return 0.0
    if len(values) != 1:
        return None
    try:
        since = float(values[0])
    except ValueError:
        return None
    return since if math.isfinite(since) else None


def accepts_gzip(header: str | None) -> bool:
    """Whether an `Accept-Encoding` header takes gzip (`q=0` refuses it).

    >>> accepts_gzip("gzip, deflate, br"), accepts_gzip(None), accepts_gzip("gzip;q=0")
    (True, False, False)
    """
    for part in (header or "").split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() in {"gzip", "*"}:
            return params.replace(" ", "") not in {"q=0", "q=0.0"}
    return False

"""The status pages' routes: static files from the package, and a machine's JSON (404 for an
unknown machine, 400 for a bad `since`)."""

from __future__ import annotations

import gzip
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from service.core.metrics import Metrics
from service.transport.http import GZIP_ABOVE, HttpServer, MachinePages, static_files

BIG = "x" * GZIP_ABOVE


def detail(machine: str) -> Mapping[str, Any] | None:
    if machine == "big":
        return {"machine": machine, "pad": BIG}
    return {"machine": machine} if machine == "press 1" else None


def history(machine: str, since: float) -> Mapping[str, Any] | None:
    return {"machine": machine, "since": since} if machine == "press 1" else None


@pytest.fixture(scope="module")
def server() -> Iterator[HttpServer]:
    metrics = Metrics(CollectorRegistry())
    http = HttpServer(
        "127.0.0.1", 0, metrics, dict, dict, list, None, MachinePages(detail, history)
    )
    http.start()
    yield http
    http.stop(time.monotonic() + 5)


def get(
    server: HttpServer, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str, bytes]:
    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=10
        ) as r:
            return (
                r.status,
                r.headers.get("Content-Encoding") or r.headers["Content-Type"],
                r.read(),
            )
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def test_the_pages_and_their_files_come_from_the_package(server: HttpServer) -> None:
    files = static_files()
    assert {"index.html", "machine.html", "plant.js", "machine.js", "charts.js"} <= set(files)
    status, kind, body = get(server, "/")
    assert (status, kind, body) == (200, "text/html; charset=utf-8", files["index.html"][1])
    assert get(server, "/machines/press%201")[2] == files["machine.html"][1]
    status, kind, _ = get(server, "/static/plant.js")
    assert (status, kind) == (200, "text/javascript; charset=utf-8")
    assert get(server, "/static/nope.js")[0] == 404
    assert get(server, "/static/..%2Fhttp.py")[0] == 404
    # Nothing is fetched from elsewhere: every script and sheet is the daemon's own.
    for name in ("index.html", "machine.html"):
        page = files[name][1].decode()
        assert "http://" not in page
        assert "https://" not in page


def test_a_machine_and_its_history(server: HttpServer) -> None:
    status, kind, body = get(server, "/api/machines/press%201")
    assert (status, kind, orjson.loads(body)) == (200, "application/json", {"machine": "press 1"})
    assert orjson.loads(get(server, "/api/machines/press%201/history?since=12.5")[2]) == {
        "machine": "press 1",
        "since": 12.5,
    }
    assert orjson.loads(get(server, "/api/machines/press%201/history")[2])["since"] == 0.0
    assert get(server, "/api/machines/nope")[0] == 404
    assert get(server, "/api/machines/nope/history")[0] == 404
    for bad in ("x", "nan", "inf", ""):
        assert get(server, f"/api/machines/press%201/history?since={bad}")[0] == 400


def test_a_large_answer_is_gzipped_for_a_client_that_takes_it(server: HttpServer) -> None:
    plain = get(server, "/api/machines/big")
    assert plain[1] == "application/json"
    assert orjson.loads(plain[2])["pad"] == BIG
    status, encoding, body = get(server, "/api/machines/big", {"Accept-Encoding": "gzip"})
    assert (status, encoding) == (200, "gzip")
    assert len(body) < len(plain[2]) // 10
    assert orjson.loads(gzip.decompress(body)) == orjson.loads(plain[2])
    # Small answers go as they are.
    assert (
        get(server, "/api/machines/press%201", {"Accept-Encoding": "gzip"})[1] == "application/json"
    )

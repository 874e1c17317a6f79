"""The status pages at a plant's size, for `benchmarks.latency`: an open page's polls while
the load runs (`Viewer`), and the pages' load time and size in Debian's chromium
(`browser_load`)."""

from __future__ import annotations

import shutil
import threading
import time
import urllib.request
from typing import Any

from benchmarks.common import percentile

# As the pages do (service/transport/static/common.js: POLL_MS).
POLL_S = 5.0


class Viewer(threading.Thread):
    """Polls the daemon as both pages open in a browser would: every `POLL_S` seconds the
    plant page's `/readyz` and `/api/machines`, and one machine page's detail and history
    (whose expected values and map are model calls on the HTTP thread), taking gzip as a
    browser does. The sizes are of what went over the wire."""

    def __init__(self, base: str, machine: str) -> None:
        super().__init__(name="viewer", daemon=True)
        self.paths = {
            "plant": ["/readyz", "/api/machines"],
            "machine": [f"/api/machines/{machine}", f"/api/machines/{machine}/history"],
        }
        self.base = base
        self.stopping = threading.Event()
        self.timings: dict[str, list[float]] = {k: [] for k in self.paths}
        self.sizes: dict[str, int] = {}

    def run(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            for page, paths in self.paths.items():
                t0 = time.perf_counter()
                size = sum(len(self._get(p)) for p in paths)
                self.timings[page].append(time.perf_counter() - t0)
                self.sizes[page] = size
            self.stopping.wait(max(0.0, POLL_S - (time.monotonic() - started)))

    def _get(self, path: str) -> bytes:
        request = urllib.request.Request(self.base + path, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            body: bytes = answer.read()
            return body

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)

    def figures(self) -> dict[str, Any]:
        return {
            page: {
                "polls": len(times),
                "p50_ms": percentile(times, 0.5) * 1e3,
                "max_ms": max(times, default=float("nan")) * 1e3,
                "sent_kib": self.sizes.get(page, 0) / 1024,
            }
            for page, times in self.timings.items()
        }


def browser_load(base: str, machine: str, machines: int) -> dict[str, Any]:
    """Each page loaded in a fresh headless chromium page: the seconds from navigation to
    its data drawn (every machine's row; the machine page's map), and the bytes it fetched
    (documents, scripts, styles and JSON, uncompressed)."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Debian's chromium is missing: `make system-deps` installs it")
    pages = {
        "plant": ("/", f"document.querySelectorAll('#plant tbody tr').length === {machines}"),
        "machine": (
            f"/machines/{machine}",
            "document.querySelectorAll('#latent circle').length > 0",
        ),
    }
    figures: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--disable-gpu"])
        for name, (path, drawn) in pages.items():
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            sizes: list[int] = []
            page.on("requestfinished", lambda r, s=sizes: s.append(r.sizes()["responseBodySize"]))
            started = time.perf_counter()
            page.goto(base + path)
            page.wait_for_function(drawn, timeout=60_000)
            figures[name] = {
                "load_s": time.perf_counter() - started,
                "kib": sum(sizes) / 1024,
                "requests": len(sizes),
            }
            page.close()
        browser.close()
    return figures

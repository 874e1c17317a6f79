"""The status pages in a real headless Chromium (Debian's `chromium`, driven by Playwright;
no browser is downloaded), against a live daemon on a real Mosquitto fed by the plant
simulator with a fault on one machine: `/` lists the faulty machine first, its page draws
its charts with data points, its map has training, recent and alert windows, and the
browser's console has no error. The JSON behind the pages is checked on the same daemon.

With `AEMON_SCREENSHOTS=<folder>` the test saves `status-plant.png` and
`status-machine.png` there (docs/ holds the ones the manual shows).
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from simulators.machine import default_machines
from simulators.plant import FaultKind, FaultSpec, Plant, Sample
from tests.support import FAST_CONFIG, Daemon, Mosquitto, Publisher, running, wait_until

pytestmark = pytest.mark.integration

FAULTY = "fan-1"
LEARN_S = 300  # discovery (5 s) and 250 windows of 20 steps, with room
FAULT_START_S = LEARN_S + 120
END_S = FAULT_START_S + 150  # the feed stops while the fault is on: the alert still fires
CONFIG: dict[str, dict[str, Any]] = {
    **FAST_CONFIG,
    "model": {"epochs": 30},
    # The feed ends in seconds; machines must not turn stale (which resolves the alert)
    # while the browser looks.
    "alert": {**FAST_CONFIG["alert"], "stale_after": 3600.0},
}


@dataclass
class Scene:
    daemon: Daemon
    broker: Mosquitto
    base: str
    started: float  # event time of the feed's first sample


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, orjson.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def feed(pub: Publisher, samples: Iterator[Sample], until: float) -> None:
    """Sends `samples` up to event time `until` (the one past it is lost)."""
    for sample in samples:
        pub.send(f"plant/{sample.machine}", {"ts": sample.ts, "values": sample.values})
        if sample.ts >= until:
            break
    pub.flush()


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    root = tmp_path_factory.mktemp("status")
    broker = Mosquitto(root).start()
    (root / "daemon").mkdir()
    daemon = Daemon(root / "daemon", broker.port, CONFIG).start()
    machines = default_machines(3, idle=False, stops=False, steady=True)
    fault = FaultSpec(FAULTY, FaultKind.IMBALANCE, FAULT_START_S, END_S, severity=2.0)
    plant = Plant(machines, seed=3, faults=[fault], missing=0.0)
    start = time.time() - 2 * END_S
    samples = plant.samples(start, END_S)
    pub = Publisher(broker.port)
    try:
        with running(pub):
            feed(pub, samples, start + LEARN_S)
            wait_until(
                lambda: [m["state"] for m in daemon.machines().values()] == ["scoring"] * 3,
                120,
                "models fitted",
            )
            feed(pub, samples, start + END_S)
            wait_until(lambda: daemon.machines()[FAULTY]["alert"] == "firing", 60, "firing")
            wait_until(
                lambda: (daemon.machines()[FAULTY]["scored_until"] or 0) >= start + END_S - 10,
                60,
                "all scored",
            )
        yield Scene(daemon, broker, f"http://127.0.0.1:{daemon.http_port}", start)
    finally:
        daemon.stop()
        broker.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is missing: `make system-deps` installs it")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


def open_page(browser: Any, url: str) -> tuple[Any, list[str]]:
    """A new page at `url`, and the list its console errors and uncaught exceptions go to."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    return page, errors


def screenshot(page: Any, name: str) -> None:
    folder = os.environ.get("AEMON_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def test_the_plant_page_lists_the_faulty_machine_first(scene: Scene, browser: Any) -> None:
    page, errors = open_page(browser, scene.base + "/")
    page.wait_for_function("document.querySelectorAll('#plant tbody tr').length === 3")
    rows = page.eval_on_selector_all(
        "#plant tbody tr", "rows => rows.map(r => [r.dataset.machine, r.dataset.group])"
    )
    assert rows[0] == [FAULTY, "firing"]
    assert sorted(r[0] for r in rows) == ["compressor-1", "fan-1", "pump-1"]
    assert "not acknowledged" in page.inner_text("#plant tbody tr:first-child")
    page.fill("#search", "pump")
    page.wait_for_function("document.querySelectorAll('#plant tbody tr').length === 1")
    page.fill("#search", "")
    page.wait_for_function("document.querySelectorAll('#plant tbody tr').length === 3")
    screenshot(page, "status-plant.png")
    page.uncheck("#filters input[data-group=firing]")
    others = len([r for r in rows if r[1] != "firing"])
    page.wait_for_function(f"document.querySelectorAll('#plant tbody tr').length === {others}")
    assert errors == []


def test_the_machine_page_draws_its_charts_and_map(scene: Scene, browser: Any) -> None:
    page, errors = open_page(browser, f"{scene.base}/machines/{FAULTY}")
    page.wait_for_function("document.querySelectorAll('#latent circle').length > 0")
    drawn = page.eval_on_selector_all(
        "svg.chart", "charts => charts.map(c => Number(c.dataset.points))"
    )
    sensors = len(scene.daemon.machines()[FAULTY]["sensors"])
    # Scores, each sensor's seen and expected (latest, around the alert), shares, the map.
    assert len(drawn) == 1 + 2 * sensors + 1 + 1
    assert all(n > 0 for n in drawn), drawn
    kinds = page.eval_on_selector_all(
        "#latent circle", "dots => [...new Set(dots.map(d => d.classList[1]))].sort()"
    )
    assert kinds == ["alert", "recent", "train"]
    assert "alert raised" in page.inner_text("#events")
    screenshot(page, "status-machine.png")
    assert errors == []


def test_the_json_behind_the_pages(scene: Scene) -> None:
    status, detail = get(f"{scene.base}/api/machines/{FAULTY}")
    assert status == 200
    assert detail["alert"] == "firing"
    assert detail["top_sensors"][0]["share"] > 0
    assert {e["kind"] for e in detail["events"]} >= {"alert", "model"}
    status, history = get(f"{scene.base}/api/machines/{FAULTY}/history")
    assert status == 200
    scores = history["scores"]
    assert scores == sorted(scores, key=lambda p: p["ts"])
    assert any(p["score"] > p["threshold"] for p in scores)
    vibration = next(s for s in history["sensors"] if s["name"] == "vibration")
    assert all(p["expected"] is not None for p in vibration["points"])
    assert {p["kind"] for p in history["latent"]} == {"train", "recent", "alert"}
    since = scores[-5]["ts"]
    _, later = get(f"{scene.base}/api/machines/{FAULTY}/history?since={since}")
    assert [p["ts"] for p in later["scores"]] == [p["ts"] for p in scores[-5:]]
    assert get(f"{scene.base}/api/machines/nope/history")[0] == 404
    assert get(f"{scene.base}/api/machines/nope")[0] == 404
    assert get(f"{scene.base}/api/machines/{FAULTY}/history?since=soon")[0] == 400


def test_an_acknowledgement_shows_in_the_detail(scene: Scene) -> None:
    pub = Publisher(scene.broker.port)
    with running(pub):
        pub.send(f"aemon/command/{FAULTY}", {"command": "ack", "by": "night shift"})
        pub.flush()
        detail = wait_until(
            lambda: (d := get(f"{scene.base}/api/machines/{FAULTY}")[1])["acknowledged_by"] and d,
            30,
            "acknowledged",
        )
    assert detail["acknowledged_by"] == "night shift"
    assert detail["acknowledged_at"] is not None
    newest = next(e for e in detail["events"] if e["kind"] == "command")
    assert (newest["command"], newest["by"], newest["ok"]) == ("ack", "night shift", True)
    assert any(e["kind"] == "alert" and e["event"] == "acknowledged" for e in detail["events"])

"""/metrics rendered in turns: prometheus_client's text, byte for byte, with a turn before
each family is collected and every few hundred samples (the pipeline's `Lull`, whose turns
tests/unit/test_lull.py shows, says when a turn may go on)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from service.core.threads import Unpaced
from service.transport.exposition import TURN_SAMPLES, TURN_WAIT, render

MACHINES = 600


def plant_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    readings = Counter("readings", "Readings.", ["machine"], registry=registry)
    score = Gauge("score", "Score.", ["machine"], registry=registry)
    for i in range(MACHINES):
        readings.labels(machine=f"m{i}").inc(i)
        score.labels(machine=f"m{i}").set(i / 7)
    Histogram("cycle_seconds", "Cycles.", registry=registry).observe(0.2)
    Info("build", "Build.", registry=registry).info({"version": "1"})
    return registry


def turns_of(registry: CollectorRegistry) -> int:
    """One before each family, one after the last, one every `TURN_SAMPLES` within."""
    families = list(registry.collect())
    return len(families) + 1 + sum(len(family.samples) // TURN_SAMPLES for family in families)


def test_render_is_prometheus_clients_text_with_turns_within_large_families() -> None:
    registry = plant_registry()
    turns = 0

    class Counting(Unpaced):
        def wait(self, timeout: float) -> bool:
            nonlocal turns
            turns += 1
            return True

    assert render(registry, Counting()) == generate_latest(registry)
    assert turns == turns_of(registry)
    assert turns >= len(list(registry.collect())) + 3, "the labelled families take turns within"


class Recording(Collector):
    def __init__(self, name: str, events: list[str]) -> None:
        self.name = name
        self.events = events

    def collect(self) -> Iterable[Metric]:
        self.events.append(f"collect {self.name}")
        return [GaugeMetricFamily(self.name, "A gauge.", value=1.0)]


def test_each_family_is_collected_only_after_a_turn() -> None:
    events: list[str] = []
    registry = CollectorRegistry()
    for name in ("a", "b", "c"):
        registry.register(Recording(name, events))
    events.clear()  # registering collects once, for the names

    class Recorded(Unpaced):
        def wait(self, timeout: float) -> None:
            events.append("turn")

    render(registry, Recorded())
    assert events == ["turn", "collect a", "turn", "collect b", "turn", "collect c", "turn"]


def test_a_scrape_waits_for_turns_only_within_its_budget() -> None:
    registry = plant_registry()
    timeouts: list[float] = []

    class NeverIdle:
        def wait(self, timeout: float) -> None:
            timeouts.append(timeout)
            time.sleep(timeout)

        def done(self) -> None:
            pass

    rendered = render(registry, NeverIdle(), budget=0.05)
    assert rendered == generate_latest(registry)
    assert 0 < len(timeouts) < turns_of(registry), "turns stop at the budget"
    assert max(timeouts) <= TURN_WAIT
    assert sum(timeouts) <= 0.05 + 1e-9

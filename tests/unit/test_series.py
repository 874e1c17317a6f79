"""Lean labelled series (`service.core.series`): the same text as prometheus_client's own
counters and gauges, its label checks, and no count lost between threads."""

from __future__ import annotations

import threading
from collections.abc import Callable

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from service.core.series import MachineCounter, MachineGauge


def filled(counter: Callable[..., Counter], gauge: Callable[..., Gauge]) -> bytes:
    registry = CollectorRegistry()
    runs = counter("runs_total", "Runs.", ["machine", "outcome"], registry=registry)
    score = gauge("score", "Score.", ["machine"], registry=registry)
    for i in range(5):
        runs.labels(machine=f"m{i}", outcome="ok").inc(i)
        runs.labels(f"m{i}", "failed")
        score.labels(machine=f"m{i}").set(i / 3)
    runs.labels(machine="m1", outcome="ok").inc(2.5)
    runs.remove("m2", "ok")
    score.remove("m3")
    return generate_latest(registry)


def test_the_text_is_prometheus_clients_own() -> None:
    prometheus_client.disable_created_metrics()
    try:
        assert filled(MachineCounter, MachineGauge) == filled(Counter, Gauge)
    finally:
        prometheus_client.enable_created_metrics()


def test_labels_are_checked_as_prometheus_client_does() -> None:
    runs = MachineCounter("runs_total", "Runs.", ["machine", "outcome"], registry=None)
    with pytest.raises(ValueError, match="names"):
        runs.labels(machine="m1")
    with pytest.raises(ValueError, match="count"):
        runs.labels("m1")
    assert runs.labels("m1", "ok") is runs.labels(outcome="ok", machine="m1")


def test_no_count_is_lost_between_threads() -> None:
    runs = MachineCounter("runs_total", "Runs.", ["machine"], registry=None)
    start = threading.Barrier(4)

    def count() -> None:
        cell = runs.labels(machine="m1")
        start.wait(10)
        for _ in range(20_000):
            cell.inc()

    threads = [threading.Thread(target=count) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert runs.labels(machine="m1").get() == 80_000

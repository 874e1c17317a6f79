"""`/metrics` over HTTP, whole or only the metrics a `name[]` query asks for."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from service.core.metrics import Metrics
from service.transport.http import HttpServer


@pytest.fixture
def server() -> Iterator[HttpServer]:
    metrics = Metrics(CollectorRegistry())
    for machine in ("press-1", "pump-2"):
        metrics.add_machine(machine)
        metrics.accepted_of[machine].inc(3)
    metrics.scoring_latency.observe(0.002)
    metrics.messages_received.inc(5)
    http = HttpServer("127.0.0.1", 0, metrics, dict, dict, list)
    http.start()
    yield http
    http.stop(time.monotonic() + 5)
    assert not http.is_alive()


def scrape(server: HttpServer, query: str = "") -> dict[str, list[float]]:
    """Sample name -> values, from a GET of /metrics."""
    url = f"http://127.0.0.1:{server.port}/metrics{query}"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample.value)
    return samples


def test_a_scrape_has_every_metric(server: HttpServer) -> None:
    samples = scrape(server)
    assert samples["aemon_readings_accepted_total"] == [3.0, 3.0]
    assert "aemon_messages_received_total" in samples
    assert "aemon_scoring_latency_seconds_count" in samples


def test_name_query_renders_only_those_metrics(server: HttpServer) -> None:
    query = "?name[]=aemon_readings_accepted_total&name[]=aemon_scoring_latency_seconds_count"
    samples = scrape(server, query)
    assert samples == {
        "aemon_readings_accepted_total": [3.0, 3.0],
        "aemon_scoring_latency_seconds_count": [1.0],
    }


def test_the_message_tally_is_a_counter_like_the_others(server: HttpServer) -> None:
    assert scrape(server)["aemon_messages_received_total"] == [5.0]
    assert scrape(server, "?name[]=aemon_messages_received_total") == {
        "aemon_messages_received_total": [5.0]
    }

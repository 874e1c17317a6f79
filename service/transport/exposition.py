"""`/metrics` rendered in turns: a family, or a few hundred samples, at a time, each turn
while the pipeline waits or when it hands one over between its cycles.

prometheus_client renders in Python, holding the GIL: at 1,000 machines (about 31,000
samples) 150 - 500 ms of collecting and formatting, during which every GIL hand-off of the
pipeline's model calls waited up to the switch interval. Each scrape stalled scoring for
0.3 - 1 s, and alerts with it (benchmarks/latency.py: alert p99 985 ms with a scrape every
15 s, 285 ms without). Rendered in turns, a scrape takes longer, and the pipeline waits
for at most a turn after each of its waits and one between cycles (`Lull`). Concurrent
scrapes take their turns together, beside the fine-tuner's. The text is
prometheus_client's own, family by family.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from service.core.threads import Turns

# Samples formatted in one turn: about a millisecond of Python.
TURN_SAMPLES = 500
# The longest a turn waits for the pipeline to wait, and a scrape's turns in all: a busy
# pipeline (fine-tunes running beside it) may not wait for seconds, and a scrape of 1,000
# machines is about 100 turns; it must end inside Prometheus' timeout (10 s). Past the
# budget the rest renders at once. 10 ms a turn and 2 s in all let a render overlap a busy
# pipeline more (alert p99 221 ms in one run, against 76 and 92 ms at 20 ms a turn).
TURN_WAIT = 0.02
WAIT_BUDGET = 5.0


class _Family(Collector):
    """One collected family, as a collector `generate_latest` renders."""

    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> Iterable[Metric]:
        return [self.family]


def render(registry: Collector, turns: Turns, budget: float = WAIT_BUDGET) -> bytes:
    """`generate_latest(registry)`, taking a turn before each family is collected and
    every `TURN_SAMPLES` samples of it are formatted: `turns.wait(timeout)` returns when
    the render may go on, or after `timeout` seconds; the timeouts stop once `budget`
    seconds have passed."""
    deadline = time.monotonic() + budget

    def turn() -> None:
        left = deadline - time.monotonic()
        if left > 0:
            turns.wait(min(TURN_WAIT, left))

    parts: list[bytes] = []
    try:
        for family in _between(registry.collect(), turn):
            paced = copy.copy(family)
            paced.samples = _every(family.samples, turn)  # type: ignore[assignment]
            parts.append(generate_latest(_Family(paced)))
    finally:
        turns.done()
    return b"".join(parts)


def _between(families: Iterable[Metric], turn: Callable[[], object]) -> Iterator[Metric]:
    # Collecting is half the work: the next family is collected only after a turn.
    turn()
    for family in families:
        yield family
        turn()


def _every(samples: list[Sample], turn: Callable[[], object]) -> Iterator[Sample]:
    for i, sample in enumerate(samples, 1):
        yield sample
        if i % TURN_SAMPLES == 0:
            turn()

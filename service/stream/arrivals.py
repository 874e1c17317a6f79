"""What the pipeline takes from its queue: `Batch`es (one per MQTT message), sorted into
each machine's `Arrivals` for the cycle."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter
from typing import NamedTuple

from service.core.types import Reading, Row

_MACHINE = attrgetter("machine")
_VALUES = attrgetter("values")


class Batch(NamedTuple):
    """One MQTT message's accepted values. A named tuple: one is made per message on
    paho's thread, and a frozen dataclass costs three times as much to build."""

    received_at: float
    readings: list[Reading]
    # Called once the readings are taken in (counted accepted or rejected): the MQTT
    # message is acknowledged only then, so the broker re-sends what a crash lost.
    ack: Callable[[], None] | None = None
    # Whole records of `machine` (service.stream.ingest), which come before `readings`.
    rows: Sequence[Row] = ()
    machine: str = ""


@dataclass(slots=True)
class Arrivals:
    """One machine's rows and readings of a cycle, in arrival order: spans of rows, each
    followed by readings, since a message's rows come before its readings."""

    spans: list[tuple[list[Row], list[Reading]]] = field(default_factory=list)
    count: int = 0  # values: readings and every row's

    def add_rows(self, rows: Sequence[Row]) -> None:
        if not self.spans or self.spans[-1][1]:
            self.spans.append(([], []))
        self.spans[-1][0].extend(rows)
        self.count += sum(map(len, map(_VALUES, rows)))

    def add_readings(self, readings: list[Reading]) -> None:
        if not self.spans:
            self.spans.append(([], []))
        self.spans[-1][1].extend(readings)
        self.count += len(readings)


def by_machine(batches: list[Batch]) -> dict[str, Arrivals]:
    """The batches' rows and readings per machine, each machine's in arrival order."""
    runs: dict[str, Arrivals] = {}
    for batch in batches:
        if batch.rows:
            arrivals = runs.get(batch.machine)
            if arrivals is None:
                arrivals = runs[batch.machine] = Arrivals()
            arrivals.add_rows(batch.rows)
        # A message's readings are of one machine; groupby keeps a mixed list right too.
        for machine, run in groupby(batch.readings, _MACHINE):
            arrivals = runs.get(machine)
            if arrivals is None:
                arrivals = runs[machine] = Arrivals()
            arrivals.add_readings(list(run))
    return runs

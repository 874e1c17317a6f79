"""A deterministic plant of pumps, fans and compressors, with injected faults and ground truth.

The core is pure: `Plant.samples` / `Plant.stream` yield readings for a span of event time
with no MQTT involved, and the values depend only on the machines, the seed and the faults,
never on the wall clock or on `start_ts` (which only offsets the timestamps). The CLI
(`simulators.plant_cli.main`, `python -m simulators.plant --help`) publishes the stream to
MQTT.

>>> plant = Plant(3, seed=1, jitter=0.0)
>>> [(s.machine, s.ts) for s in plant.samples(1000.0, 2)]
[('pump-1', 1000.0), ('fan-1', 1000.0), ('compressor-1', 1000.0), ('pump-1', 1001.0), \
('fan-1', 1001.0), ('compressor-1', 1001.0)]
>>> next(plant.stream(1000.0, 1))
Reading(machine='pump-1', sensor='current', ts=1000.0, value=...)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

from service.core.types import Reading
from simulators.faults import FaultSpec, load_faults, parse_fault
from simulators.kinds import expected_signature
from simulators.machine import MachineSim, MachineSpec, check_fault, default_machines
from simulators.model import FaultKind, MachineKind, Sample, TruthEvent

__all__ = [
    "FaultKind",
    "FaultSpec",
    "MachineKind",
    "MachineSpec",
    "Plant",
    "Reading",
    "Sample",
    "TruthEvent",
    "default_machines",
    "expected_signature",
    "load_faults",
    "parse_fault",
]


class Plant:
    """Machines sampled together on a common clock, with faults on a schedule.

    `machines` is a list of `MachineSpec` or a count for `default_machines(n)`. Each reading
    is lost with probability `missing`; timestamps jitter by `jitter` periods (1 sd, at most
    a quarter period) around the sampling grid."""

    def __init__(
        self,
        machines: Sequence[MachineSpec] | int = 6,
        *,
        seed: int = 0,
        faults: Sequence[FaultSpec] = (),
        missing: float = 0.002,
        jitter: float = 0.02,
    ) -> None:
        specs = default_machines(machines) if isinstance(machines, int) else list(machines)
        self.machines: tuple[MachineSpec, ...] = tuple(specs)
        by_name = {m.name: m for m in specs}
        if len(by_name) != len(specs):
            raise ValueError("machine names must be unique")
        for fault in faults:
            if fault.machine not in by_name:
                raise ValueError(f"fault on unknown machine {fault.machine!r}: {list(by_name)}")
            check_fault(by_name[fault.machine], fault)
        if not (0.0 <= missing < 1.0 and 0.0 <= jitter <= 1.0):
            raise ValueError("missing is a probability below 1, jitter a fraction of a period")
        self.seed, self.missing, self.jitter = seed, missing, jitter
        self.faults: tuple[FaultSpec, ...] = tuple(faults)

    def machine(self, name: str) -> MachineSpec:
        return next(m for m in self.machines if m.name == name)

    def samples(self, start_ts: float, duration_s: float, period: float = 1.0) -> Iterator[Sample]:
        """Every machine every `period` seconds for `duration_s` (may be `math.inf`) from
        `start_ts`. Each call starts afresh and yields the identical sequence."""
        for _, batch in self._by_tick(start_ts, duration_s, period):
            yield from batch

    def _by_tick(
        self, start_ts: float, duration_s: float, period: float
    ) -> Iterator[tuple[float, list[Sample]]]:
        """(grid timestamp, the samples of that instant) for each sampling instant."""
        if not period > 0:
            raise ValueError("period must be positive")
        sims = [
            MachineSim(
                m,
                self.seed,
                [f for f in self.faults if f.machine == m.name],
                missing=self.missing,
                jitter=self.jitter,
            )
            for m in self.machines
        ]
        for k in _ticks(duration_s, period):
            t = k * period
            batch = []
            for sim in sims:
                jitter, values = sim.step(t, period)
                if values:
                    batch.append(Sample(sim.spec.name, round(start_ts + t + jitter, 3), values))
            yield start_ts + t, batch

    def stream(self, start_ts: float, duration_s: float, period: float = 1.0) -> Iterator[Reading]:
        """The same as `samples`, one `Reading(machine, sensor, ts, value)` per value."""
        for s in self.samples(start_ts, duration_s, period):
            for sensor, value in s.values.items():
                yield Reading(s.machine, sensor, s.ts, value)

    def truth(self, start_ts: float, duration_s: float = math.inf) -> list[TruthEvent]:
        """Fault starts and ends in event time, in time order. A fault that starts after
        `duration_s` is left out; one that outlasts it ends with the stream."""
        events = []
        for f in self.faults:
            if f.start_s < duration_s:
                kind = f.kind.value
                events.append(TruthEvent(f.machine, kind, "start", start_ts + f.start_s))
                end = start_ts + min(f.end_s, duration_s)
                events.append(TruthEvent(f.machine, kind, "end", end))
        return sorted(events, key=lambda e: (e.ts, e.state == "start", e.machine))

    def events(
        self, start_ts: float, duration_s: float, period: float = 1.0
    ) -> Iterator[Sample | TruthEvent]:
        """Samples with the truth events merged in: each event comes before the first
        sampling instant at or after it (jitter aside)."""
        pending = iter(self.truth(start_ts, duration_s))
        nxt = next(pending, None)
        for grid_ts, batch in self._by_tick(start_ts, duration_s, period):
            while nxt is not None and nxt.ts <= grid_ts:
                yield nxt
                nxt = next(pending, None)
            yield from batch
        while nxt is not None:  # the ends of faults that outlast the stream
            yield nxt
            nxt = next(pending, None)

    def active_faults(self, machine: str, t_s: float) -> list[FaultSpec]:
        """The faults active on `machine` at `t_s` seconds after the stream's start."""
        return [f for f in self.faults if f.machine == machine and f.active(t_s)]


def _ticks(duration_s: float, period: float) -> Iterator[int]:
    if math.isinf(duration_s):
        return itertools.count()
    return iter(range(math.ceil(duration_s / period - 1e-9)))


if __name__ == "__main__":
    # `python -m simulators.plant`: this file runs as `__main__`, and the CLI imports it
    # again as `simulators.plant`; imported, it never imports the CLI.
    from simulators.plant_cli import main

    raise SystemExit(main())

"""A small 4-sensor machine whose sensors follow its load, for tests that need one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

SENSORS = ("current", "pressure", "temperature", "vibration")


@dataclass(frozen=True)
class Fault:
    start: float  # seconds from the stream's start
    end: float
    sensor: str
    factor: float


def machine_rows(
    start_ts: float,
    seconds: int,
    seed: int = 0,
    loads: tuple[float, ...] = (0.6, 0.8, 1.0),
    load_step: float = 60.0,
    fault: Fault | None = None,
    temperature0: float | None = None,
    temperature_drift: float = 0.0,
) -> Iterator[tuple[float, dict[str, float]]]:
    """One row a second: `(ts, {sensor: value})`. Current, pressure and vibration follow the
    load at once; temperature follows it with a 30 s lag, plus `temperature_drift` degrees
    per second of slow change in the operating point."""
    rng = np.random.default_rng(seed)
    temperature = temperature0 if temperature0 is not None else 40 + 30 * loads[0]
    for i in range(seconds):
        load = loads[int(i // load_step) % len(loads)]
        temperature += (40 + 30 * load + temperature_drift * i - temperature) / 30
        values = {
            "current": 10 * load + rng.normal(0, 0.1),
            "pressure": 3 * load**2 + rng.normal(0, 0.03),
            "temperature": temperature + rng.normal(0, 0.2),
            "vibration": 0.5 + 0.3 * load + rng.normal(0, 0.02),
        }
        if fault is not None and fault.start <= i < fault.end:
            values[fault.sensor] *= fault.factor
        yield start_ts + i, values

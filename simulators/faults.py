"""Fault specifications (CLI strings, TOML files) and what each fault does at one step.

Each active fault has its own random generator, seeded from the run's seed, the machine,
the fault's kind and its start: adding or removing a fault never changes the random draws
of the machine's normal behaviour or of any other fault.
"""

from __future__ import annotations

import math
import tomllib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simulators.model import FaultKind, Modifiers, SensorSpec


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """A fault on `machine` from `start_s` for `duration_s` seconds after the stream's start.

    `sensor` names the sensor of a sensor fault (a per-kind default when None); `severity`
    scales the effect (1 is clearly visible, 0.3 subtle).

    >>> FaultSpec("pump-1", "bearing_wear", 120, 300).end_s
    420.0
    """

    machine: str
    kind: FaultKind
    start_s: float
    duration_s: float
    sensor: str | None = None
    severity: float = 1.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", FaultKind(self.kind))
        except ValueError:
            kinds = ", ".join(k.value for k in FaultKind)
            raise ValueError(f"unknown fault kind {self.kind!r}; kinds: {kinds}") from None
        object.__setattr__(self, "start_s", float(self.start_s))
        object.__setattr__(self, "duration_s", float(self.duration_s))
        if not (self.start_s >= 0 and self.duration_s > 0 and math.isfinite(self.end_s)):
            raise ValueError(f"fault {self.machine}:{self.kind}: needs start >= 0, duration > 0")
        if not 0 < self.severity <= 5:
            raise ValueError(f"fault {self.machine}:{self.kind}: severity must be in (0, 5]")

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def active(self, t: float) -> bool:
        return self.start_s <= t < self.end_s

    def progress(self, t: float) -> float:
        """0 at the start of the window, 1 at its end."""
        return min(1.0, max(0.0, (t - self.start_s) / self.duration_s))


def parse_fault(text: str) -> FaultSpec:
    """`machine:kind:start_s:duration_s[:key=value,...]` with keys `sensor` and `severity`.

    >>> parse_fault("pump-1:bearing_wear:120:300")
    FaultSpec(machine='pump-1', kind=<FaultKind.BEARING_WEAR: 'bearing_wear'>, start_s=120.0, \
duration_s=300.0, sensor=None, severity=1.0)
    >>> parse_fault("fan-1:stuck_sensor:60:30:sensor=airflow,severity=0.5").sensor
    'airflow'
    """
    parts = text.strip().split(":")
    if len(parts) not in (4, 5):
        raise ValueError(f"fault {text!r} is not machine:kind:start_s:duration_s[:key=value,...]")
    options: dict[str, str] = {}
    for item in parts[4].split(",") if len(parts) == 5 else []:
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in ("sensor", "severity"):
            raise ValueError(f"fault {text!r}: options are sensor=NAME and severity=X")
        options[key.strip()] = value.strip()
    try:
        start, duration = float(parts[2]), float(parts[3])
        severity = float(options.get("severity", "1"))
    except ValueError:
        raise ValueError(f"fault {text!r}: start, duration and severity are numbers") from None
    return FaultSpec(
        parts[0], FaultKind(_kind(parts[1])), start, duration, options.get("sensor"), severity
    )


def _kind(name: str) -> str:
    if name not in {k.value for k in FaultKind}:
        kinds = ", ".join(k.value for k in FaultKind)
        raise ValueError(f"unknown fault kind {name!r}; kinds: {kinds}")
    return name


def load_faults(path: str | Path) -> list[FaultSpec]:
    """Faults from a TOML file: one `[[fault]]` table each, with `machine`, `kind`,
    `start_s`, `duration_s` and optionally `sensor` and `severity`."""
    with Path(path).open("rb") as f:
        doc = tomllib.load(f)
    tables = doc.get("fault", [])
    if not isinstance(tables, list):
        raise ValueError(f"{path}: faults are [[fault]] tables")
    return [_fault_from_table(t, path, i) for i, t in enumerate(tables)]


def _fault_from_table(table: Mapping[str, Any], path: str | Path, i: int) -> FaultSpec:
    allowed = {"machine", "kind", "start_s", "duration_s", "sensor", "severity"}
    unknown = set(table) - allowed
    missing = {"machine", "kind", "start_s", "duration_s"} - set(table)
    if unknown or missing:
        raise ValueError(f"{path}: fault {i}: unknown keys {unknown or '{}'}, missing {missing}")
    return FaultSpec(
        machine=str(table["machine"]),
        kind=FaultKind(_kind(str(table["kind"]))),
        start_s=float(table["start_s"]),
        duration_s=float(table["duration_s"]),
        sensor=None if table.get("sensor") is None else str(table["sensor"]),
        severity=float(table.get("severity", 1.0)),
    )


def fault_rng(seed: int, spec: FaultSpec) -> np.random.Generator:
    key = [seed, zlib.crc32(spec.machine.encode()), zlib.crc32(spec.kind.value.encode())]
    return np.random.default_rng([*key, round(spec.start_s * 1000)])


def _trapezoid(t_in: float, duration: float, ramp: float) -> float:
    """0 -> 1 over `ramp` seconds, held, and back to 0 over the last `ramp` seconds."""
    return max(0.0, min(1.0, t_in / ramp, (duration - t_in) / ramp))


class ActiveFault:
    """One fault on one machine while a stream runs: it draws its randomness every step of
    its window and only then, so the machine's own draws stay the same."""

    def __init__(
        self, spec: FaultSpec, seed: int, sensor: SensorSpec | None = None, scale: float = 1.0
    ) -> None:
        self.spec = spec
        self.sensor = sensor  # the target of a sensor fault, None for a physical one
        self.scale = scale  # the target's typical magnitude (its value at rated load)
        self.rng = fault_rng(seed, spec)
        self.frozen: float | None = None

    def modify(self, t: float, m: Modifiers) -> None:
        """Adds this physical fault's effect at time `t` (seconds since the start) to `m`."""
        spec, sev = self.spec, self.spec.severity
        t_in, p = t - spec.start_s, spec.progress(t)
        kind = spec.kind
        if kind is FaultKind.BEARING_WEAR:  # pitting grows slowly, then accelerates
            m.wear += sev * p**1.5
        elif kind is FaultKind.VALVE_CLOSURE:  # closes over a minute, reopens at the end
            closed = min(0.9, 0.6 * sev) * _trapezoid(
                t_in, spec.duration_s, min(60.0, spec.duration_s / 4)
            )
            m.valve *= 1.0 - closed
        elif kind is FaultKind.CAVITATION:
            self._cavitate(t_in, m)
        elif kind is FaultKind.IMBALANCE:  # a lost balance weight: a step
            m.imbalance += sev
        elif kind is FaultKind.COOLING_FAILURE:  # the cooling fan / cooler fails within 30 %
            m.cooling *= 1.0 - min(0.9, 0.75 * sev) * min(1.0, p / 0.3)

    def _cavitate(self, t_in: float, m: Modifiers) -> None:
        # A blocked strainer or a falling tank level lowers the suction pressure; below the
        # NPSH margin vapour bubbles form and collapse: lost head, broadband vibration bursts.
        u = self.rng.random(3)
        drop = (
            0.6
            * self.spec.severity
            * _trapezoid(t_in, self.spec.duration_s, min(30.0, self.spec.duration_s / 5))
        )
        m.suction_drop += drop
        intensity = min(1.0, max(0.0, (drop - 0.2) / 0.3))
        m.cavitation = max(m.cavitation, intensity * (0.8 + 0.4 * float(u[0])))
        if u[1] < 0.4 * intensity:
            m.burst += intensity * (1.0 + 2.0 * float(u[2]))

    def measure(self, t: float, value: float, last: float) -> float:
        """This sensor fault applied to one reading; `last` is the sensor's previous value."""
        assert self.sensor is not None
        kind, sev, sensor = self.spec.kind, self.spec.severity, self.sensor
        if kind is FaultKind.STUCK_SENSOR:
            if self.frozen is None:
                self.frozen = last
            return self.frozen
        if kind is FaultKind.SENSOR_DRIFT:  # calibration walks off linearly, 40 % by the end
            value += 0.4 * sev * self.scale * self.spec.progress(t)
        else:  # spikes: about one reading in twenty jumps most of the way to a range end,
            # as a glitching 4-20 mA loop does
            u = self.rng.random(3)
            if u[0] < 0.05:
                reach = min(1.0, sev * (0.5 + 0.5 * float(u[2])))
                end = sensor.high if u[1] < 0.7 else sensor.low
                value += reach * (end - value)
        return min(sensor.high, max(sensor.low, value))

"""The small value types that the simulator's physics, faults and schedules share."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class MachineKind(StrEnum):
    PUMP = "pump"
    FAN = "fan"
    COMPRESSOR = "compressor"


class FaultKind(StrEnum):
    """Physical faults change the process; sensor faults change one sensor's readings only."""

    BEARING_WEAR = "bearing_wear"
    VALVE_CLOSURE = "valve_closure"
    CAVITATION = "cavitation"
    IMBALANCE = "imbalance"
    COOLING_FAILURE = "cooling_failure"
    STUCK_SENSOR = "stuck_sensor"
    SENSOR_DRIFT = "sensor_drift"
    SPIKES = "spikes"

    @property
    def is_sensor_fault(self) -> bool:
        return self in SENSOR_FAULTS


SENSOR_FAULTS = frozenset({FaultKind.STUCK_SENSOR, FaultKind.SENSOR_DRIFT, FaultKind.SPIKES})


class OpMode(StrEnum):
    """RUN at a set-point; IDLE at the kind's idle speed (a compressor runs unloaded);
    STOP: the motor is off and the machine coasts down."""

    RUN = "run"
    IDLE = "idle"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """A sensor's name, unit, measuring range (readings saturate there) and noise (1 sd)."""

    name: str
    unit: str
    low: float
    high: float
    noise: float

    @property
    def span(self) -> float:
        return self.high - self.low


@dataclass(frozen=True, slots=True)
class OpPoint:
    """Where a machine runs now: `speed` is the actual shaft speed as a fraction of rated."""

    mode: OpMode
    speed: float

    @property
    def running(self) -> bool:
        return self.mode is not OpMode.STOP

    @property
    def loaded(self) -> bool:
        return self.mode is OpMode.RUN


@dataclass(slots=True)
class Modifiers:
    """What the active physical faults do to the process at one step (neutral by default)."""

    valve: float = 1.0  # opening of the throttling valve / damper / inlet valve, 0..1
    suction_drop: float = 0.0  # bar lost at the pump's suction
    cavitation: float = 0.0  # 0..1, share of the pump's head lost to vapour
    burst: float = 0.0  # broadband vibration burst, in multiples of the kind's scale
    wear: float = 0.0  # bearing wear, 0 (new) .. about 1 (due for replacement)
    imbalance: float = 0.0  # rotor imbalance, 0 .. about 1
    cooling: float = 1.0  # share of the nominal heat removal that still works


@dataclass(frozen=True, slots=True)
class Env:
    """Slow surroundings of a machine: ambient temperature (°C), supply voltage offset (V)."""

    ambient: float
    voltage: float


@dataclass(frozen=True, slots=True)
class Sample:
    """One machine's readings at one sampling instant; lost readings are absent."""

    machine: str
    ts: float
    values: dict[str, float]


@dataclass(frozen=True, slots=True)
class TruthEvent:
    """A fault starting or ending on a machine, at event time (Unix seconds)."""

    machine: str
    fault: str  # a FaultKind value; a label name ("anomaly") when replaying a file
    state: Literal["start", "end"]
    ts: float

    def to_dict(self) -> dict[str, str | float]:
        """The payload of `sim/truth/<machine>`."""
        return {"machine": self.machine, "fault": self.fault, "state": self.state, "ts": self.ts}

"""One simulated machine: its spec, and its state stepped through time.

Randomness is split so that a run is reproducible and faults are comparable: per machine,
from `(seed, crc32(name))`, one generator for the operating schedule, one for the process
(speed ripple, ambient, supply voltage) and one for the measurement (noise, jitter, missing
readings); each fault has its own (see `faults.fault_rng`). Every step draws the same
numbers whatever the faults, so a faulty stream equals the fault-free one outside the
fault's effects. Nothing depends on the wall clock.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from simulators.faults import ActiveFault, FaultSpec
from simulators.kinds import KINDS, KindModel
from simulators.model import Env, MachineKind, Modifiers, OpMode, OpPoint
from simulators.operation import Schedule


@dataclass(frozen=True, slots=True)
class MachineSpec:
    """A machine of `kind` ("pump", "fan", "compressor").

    It cycles through `setpoints` (fractions of rated speed; the kind's when None), holding
    each for a time drawn from `dwell_s`, with an `idle` segment and a `stops` segment in
    each cycle; `steady` runs at the highest set-point all the time."""

    name: str
    kind: MachineKind
    setpoints: tuple[float, ...] | None = None
    dwell_s: tuple[float, float] = (120.0, 300.0)
    idle: bool = True
    stops: bool = True
    steady: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", MachineKind(self.kind))
        if self.setpoints is not None and (
            not self.setpoints or any(not 0.2 <= s <= 1.1 for s in self.setpoints)
        ):
            raise ValueError(f"{self.name}: set-points are fractions of rated speed, 0.2..1.1")
        lo, hi = self.dwell_s
        if not 0 < lo <= hi:
            raise ValueError(f"{self.name}: dwell_s is (min, max) seconds, 0 < min <= max")

    @property
    def model(self) -> KindModel:
        return KINDS[self.kind]

    @property
    def sensors(self) -> tuple[str, ...]:
        return self.model.sensor_names


def default_machines(
    n: int = 6,
    *,
    dwell_s: tuple[float, float] = (120.0, 300.0),
    idle: bool = True,
    stops: bool = True,
    steady: bool = False,
) -> list[MachineSpec]:
    """`n` machines, kinds in turn: `pump-1, fan-1, compressor-1, pump-2, ...`.

    >>> [m.name for m in default_machines(4)]
    ['pump-1', 'fan-1', 'compressor-1', 'pump-2']
    """
    if n < 1:
        raise ValueError("a plant has at least one machine")
    kinds = list(MachineKind)
    return [
        MachineSpec(
            f"{kinds[i % 3].value}-{i // 3 + 1}",
            kinds[i % 3],
            dwell_s=dwell_s,
            idle=idle,
            stops=stops,
            steady=steady,
        )
        for i in range(n)
    ]


def check_fault(spec: MachineSpec, fault: FaultSpec) -> None:
    """Raises ValueError when `fault` cannot happen on this machine."""
    model = spec.model
    if fault.kind not in model.supported_faults:
        raise ValueError(f"{fault.kind} is not a fault of a {spec.kind} ({spec.name})")
    if fault.kind.is_sensor_fault:
        sensor = fault.sensor or model.fault_sensor[fault.kind]
        if sensor not in model.sensor_names:
            raise ValueError(f"{spec.name} has no sensor {sensor!r}; it has {spec.sensors}")
    elif fault.sensor is not None:
        raise ValueError(f"{fault.kind} is a physical fault: it takes no sensor")


class MachineSim:
    """The state of one machine during one stream."""

    def __init__(
        self,
        spec: MachineSpec,
        seed: int,
        faults: Sequence[FaultSpec],
        *,
        missing: float,
        jitter: float,
    ) -> None:
        self.spec, self.model = spec, spec.model
        self.missing, self.jitter = missing, jitter
        streams = np.random.SeedSequence([seed, zlib.crc32(spec.name.encode())]).spawn(3)
        schedule_rng, self.process, self.measurement = (np.random.default_rng(s) for s in streams)
        model = self.model
        self.schedule = Schedule(
            model.setpoints if spec.setpoints is None else spec.setpoints,
            model.idle_speed,
            spec.dwell_s,
            idle=spec.idle,
            stops=spec.stops,
            rng=schedule_rng,
            steady=spec.steady,
        )
        self.ambient0 = 18.0 + 8.0 * float(self.process.random())
        self.ambient_dev = self.voltage_dev = 0.0
        # Sensor faults are sized by each sensor's value at rated load, not by its range.
        self.rated = self._settled(OpPoint(OpMode.RUN, 1.0))
        self.faults = [self._activate(f, seed) for f in faults]
        self.speed = self.schedule.first.speed
        settled = self._settled(OpPoint(self.schedule.first.mode, self.speed))
        self.lagged = {name: settled[name] for name in self.model.lags}
        self.last: dict[str, float] = {}

    def _activate(self, fault: FaultSpec, seed: int) -> ActiveFault:
        check_fault(self.spec, fault)
        if not fault.kind.is_sensor_fault:
            return ActiveFault(fault, seed)
        sensor = self.model.sensor(fault.sensor or self.model.fault_sensor[fault.kind])
        scale = max(abs(self.rated[sensor.name]), 0.05 * sensor.span)
        return ActiveFault(fault, seed, sensor, scale)

    def _settled(self, op: OpPoint) -> dict[str, float]:
        """Every sensor's value settled at `op`: a run starts warm, not from a cold plant."""
        env = Env(self.ambient0, 0.0)
        lagged = {name: env.ambient for name in self.model.lags}
        for _ in range(20):  # current and temperature are coupled: iterate to a fixed point
            values = self.model.physics(op, Modifiers(), env, lagged)
            lagged = {name: values[name] for name in self.model.lags}
        return values

    def step(self, t: float, dt: float) -> tuple[float, dict[str, float]]:
        """Advances to `t` seconds after the start: (timestamp jitter in s, the readings that
        were not lost)."""
        true = self._process(t, dt)
        return self._measure(t, dt, true)

    def _process(self, t: float, dt: float) -> dict[str, float]:
        z = self.process.standard_normal(3)
        mode, target = self.schedule.target(t)
        # Speed follows its set-point through the drive's ramp; a stopped machine coasts.
        tau = 10.0 if mode is OpMode.STOP else 4.0
        self.speed += (target - self.speed) * (1.0 - math.exp(-dt / tau))
        ripple = 1.0 + 0.003 * float(z[0]) if mode is not OpMode.STOP else 1.0
        self.ambient_dev = _ar1(self.ambient_dev, dt, 3600.0, 1.0, float(z[1]))
        self.voltage_dev = _ar1(self.voltage_dev, dt, 120.0, 1.5, float(z[2]))
        mods = Modifiers()
        for fault in self.faults:
            if fault.sensor is None and fault.spec.active(t):
                fault.modify(t, mods)
        op = OpPoint(mode, max(0.0, self.speed * ripple))
        env = Env(self.ambient0 + self.ambient_dev, self.voltage_dev)
        true = self.model.physics(op, mods, env, self.lagged)
        for name, tau_s in self.model.lags.items():
            self.lagged[name] += (true[name] - self.lagged[name]) * (1.0 - math.exp(-dt / tau_s))
            true[name] = self.lagged[name]
        return true

    def _measure(
        self, t: float, dt: float, true: dict[str, float]
    ) -> tuple[float, dict[str, float]]:
        sensors = self.model.sensors
        noise = self.measurement.standard_normal(len(sensors))
        lost = self.measurement.random(len(sensors)) < self.missing
        z_jitter = float(self.measurement.standard_normal())
        values: dict[str, float] = {}
        for i, sensor in enumerate(sensors):
            # Sensors saturate at their measuring range (a stopped pump's flow reads 0).
            value = true[sensor.name] + sensor.noise * float(noise[i])
            value = min(sensor.high, max(sensor.low, value))
            for fault in self.faults:
                if fault.sensor is sensor and fault.spec.active(t):
                    value = fault.measure(t, value, self.last.get(sensor.name, value))
            value = round(value, 6)  # what a transmitter sends; keeps payloads short
            self.last[sensor.name] = value
            if not lost[i]:
                values[sensor.name] = value
        jitter = max(-0.25 * dt, min(0.25 * dt, self.jitter * dt * z_jitter))
        return jitter, values


def _ar1(x: float, dt: float, tau: float, sd: float, z: float) -> float:
    """A slow random walk that returns to 0 with time constant `tau` and stationary `sd`."""
    phi = math.exp(-dt / tau)
    return phi * x + sd * math.sqrt(1.0 - phi * phi) * z

"""A deterministic plant of pumps, fans and compressors, with injected faults and ground truth.

The core (`Plant`, `default_machines`, `FaultSpec`) is pure: values depend only on the seed,
the machines and the faults, never on the wall clock. The CLI publishes the stream to MQTT.

Physics (centrifugal machines, affinity laws): at relative speed `s` and valve opening `q`,
flow ∝ s·q, pressure ∝ s²·(1 + 0.35·(1 - q²)) (the pump curve rises as flow falls), shaft
power and current ∝ s³·(0.4 + 0.6·q) above an idle current. Temperatures follow the load
through first-order lags. Noise, missing readings and fault randomness come from separate
generators, so adding a fault leaves the readings outside its effects bit-for-bit unchanged.

    >>> plant = Plant(default_machines(3), seed=1, faults=[])
    >>> rows = list(plant.stream(0.0, 2))
    >>> [(m, ts) for m, ts, _ in rows][:4]
    [('pump-1', 0.0), ('fan-1', 0.0), ('compressor-1', 0.0), ('pump-1', 1.0)]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import structlog

log = structlog.get_logger("simulators.plant")

FAULT_KINDS = (
    "bearing_wear",
    "valve_closure",
    "cavitation",
    "imbalance",
    "cooling_failure",
    "stuck_sensor",
    "sensor_drift",
    "spikes",
)
SENSOR_FAULTS = ("stuck_sensor", "sensor_drift", "spikes")


@dataclass(frozen=True)
class KindProfile:
    """Nominal values of one kind of machine at full speed and fully open."""

    sensors: tuple[str, ...]
    flow: float  # m³/h
    pressure: float  # bar (fan: kPa)
    idle_current: float  # A
    load_current: float  # A at full speed and flow
    voltage: float  # V
    vibration: float  # mm/s RMS at full speed
    ambient: float  # °C
    motor_rise: float  # °C above ambient at full load
    motor_tau: float  # s
    process_rise: float  # °C above ambient of the fluid / air / discharge at full load
    process_tau: float  # s
    # Default sensor of the sensor faults (stuck, drift, spikes).
    default_fault_sensor: dict[str, str] = field(default_factory=dict)
    noise: dict[str, float] = field(default_factory=dict)  # absolute standard deviations


PROFILES: dict[str, KindProfile] = {
    "pump": KindProfile(
        sensors=(
            "current",
            "voltage",
            "vibration_1",
            "vibration_2",
            "pressure",
            "flow",
            "motor_temperature",
            "fluid_temperature",
        ),
        flow=50.0,
        pressure=4.0,
        idle_current=2.0,
        load_current=14.0,
        voltage=400.0,
        vibration=1.2,
        ambient=22.0,
        motor_rise=45.0,
        motor_tau=120.0,
        process_rise=8.0,
        process_tau=300.0,
        default_fault_sensor={
            "stuck_sensor": "flow",
            "sensor_drift": "pressure",
            "spikes": "current",
        },
        noise={
            "current": 0.08,
            "voltage": 1.5,
            "vibration_1": 0.03,
            "vibration_2": 0.03,
            "pressure": 0.03,
            "flow": 0.3,
            "motor_temperature": 0.2,
            "fluid_temperature": 0.1,
        },
    ),
    "fan": KindProfile(
        sensors=(
            "current",
            "voltage",
            "vibration_1",
            "vibration_2",
            "pressure",
            "flow",
            "motor_temperature",
            "bearing_temperature",
        ),
        flow=12000.0,
        pressure=1.5,
        idle_current=1.0,
        load_current=9.0,
        voltage=400.0,
        vibration=2.0,
        ambient=20.0,
        motor_rise=35.0,
        motor_tau=90.0,
        process_rise=25.0,
        process_tau=200.0,
        default_fault_sensor={
            "stuck_sensor": "flow",
            "sensor_drift": "pressure",
            "spikes": "vibration_1",
        },
        noise={
            "current": 0.05,
            "voltage": 1.5,
            "vibration_1": 0.05,
            "vibration_2": 0.05,
            "pressure": 0.01,
            "flow": 60.0,
            "motor_temperature": 0.2,
            "bearing_temperature": 0.15,
        },
    ),
    "compressor": KindProfile(
        sensors=(
            "current",
            "voltage",
            "vibration_1",
            "vibration_2",
            "suction_pressure",
            "discharge_pressure",
            "flow",
            "motor_temperature",
            "discharge_temperature",
        ),
        flow=900.0,
        pressure=8.0,
        idle_current=6.0,
        load_current=60.0,
        voltage=400.0,
        vibration=1.8,
        ambient=25.0,
        motor_rise=50.0,
        motor_tau=150.0,
        process_rise=70.0,
        process_tau=60.0,
        default_fault_sensor={
            "stuck_sensor": "flow",
            "sensor_drift": "discharge_pressure",
            "spikes": "current",
        },
        noise={
            "current": 0.3,
            "voltage": 1.5,
            "vibration_1": 0.04,
            "vibration_2": 0.04,
            "suction_pressure": 0.01,
            "discharge_pressure": 0.05,
            "flow": 5.0,
            "motor_temperature": 0.2,
            "discharge_temperature": 0.3,
        },
    ),
}

# The sensor that carries each physical quantity, per kind (compressor pressure is discharge).
PRESSURE_SENSOR = {"pump": "pressure", "fan": "pressure", "compressor": "discharge_pressure"}


@dataclass(frozen=True)
class MachineSpec:
    """One machine: `kind` is `pump`, `fan` or `compressor`. Its speed cycles through
    `speeds` (fractions of full speed), holding each for `hold` seconds, starting at
    `phase` seconds into the cycle; each reading is missing with probability `missing`."""

    name: str
    kind: str
    speeds: tuple[float, ...] = (0.7, 0.85, 1.0)
    hold: float = 60.0
    phase: float = 0.0
    missing: float = 0.002

    def __post_init__(self) -> None:
        if self.kind not in PROFILES:
            raise ValueError(
                f"unknown machine kind {self.kind!r}, expected one of {list(PROFILES)}"
            )
        if not self.speeds or any(not 0.0 < s <= 1.5 for s in self.speeds):
            raise ValueError("speeds must be non-empty fractions in (0, 1.5]")
        if self.hold <= 0 or not 0.0 <= self.missing < 1.0:
            raise ValueError("hold must be positive and missing a probability below 1")

    @property
    def sensors(self) -> tuple[str, ...]:
        return PROFILES[self.kind].sensors


@dataclass(frozen=True)
class FaultSpec:
    """A fault on `machine` from `start` for `duration` seconds after the stream's start.
    `sensor` picks the sensor of the sensor faults (a per-kind default otherwise);
    `magnitude` scales the effect (1 is clearly visible)."""

    machine: str
    kind: str
    start: float
    duration: float
    sensor: str | None = None
    magnitude: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}, expected one of {FAULT_KINDS}")
        if self.start < 0 or self.duration <= 0:
            raise ValueError("a fault needs start >= 0 and duration > 0")

    @property
    def end(self) -> float:
        return self.start + self.duration

    def active(self, t: float) -> bool:
        return self.start <= t < self.end

    def progress(self, t: float) -> float:
        """0 at the start, 1 at the end of the window."""
        return min(1.0, max(0.0, (t - self.start) / self.duration))


def parse_fault(text: str) -> FaultSpec:
    """`machine:kind:start:duration[:sensor]`, as the CLI takes it.

    >>> f = parse_fault("pump-1:bearing_wear:120:300")
    >>> f.machine, f.kind, f.start, f.end
    ('pump-1', 'bearing_wear', 120.0, 420.0)
    """
    parts = text.split(":")
    if len(parts) not in (4, 5):
        raise ValueError(f"fault {text!r} is not machine:kind:start:duration[:sensor]")
    sensor = parts[4] if len(parts) == 5 else None
    return FaultSpec(parts[0], parts[1], float(parts[2]), float(parts[3]), sensor=sensor)


def default_machines(n: int = 6) -> list[MachineSpec]:
    """`n` machines cycling pump, fan, compressor: `pump-1, fan-1, compressor-1, pump-2, ...`,
    each with its own repeating set-point pattern.

    >>> [m.name for m in default_machines(4)]
    ['pump-1', 'fan-1', 'compressor-1', 'pump-2']
    """
    patterns = {
        "pump": ((0.7, 0.85, 1.0), 60.0),
        "fan": ((0.6, 0.9, 0.75, 1.0), 90.0),
        "compressor": ((0.8, 1.0), 120.0),
    }
    kinds = ("pump", "fan", "compressor")
    machines = []
    for i in range(n):
        kind = kinds[i % 3]
        number = i // 3 + 1
        speeds, hold = patterns[kind]
        machines.append(
            MachineSpec(
                name=f"{kind}-{number}",
                kind=kind,
                speeds=speeds,
                hold=hold,
                phase=(number - 1) * hold / 2,
            )
        )
    return machines


def _stable_seed(seed: int, name: str, salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode()), salt])


class _Machine:
    """The state of one machine between steps."""

    def __init__(self, spec: MachineSpec, seed: int, faults: list[FaultSpec]) -> None:
        self.spec = spec
        self.profile = PROFILES[spec.kind]
        for fault in faults:
            if fault.kind in SENSOR_FAULTS:
                sensor = fault.sensor or self.profile.default_fault_sensor[fault.kind]
                if sensor not in self.profile.sensors:
                    raise ValueError(f"{spec.name} has no sensor {sensor!r} for {fault.kind}")
        self.faults = faults
        # Noise and missing readings; drawn the same way every step whatever the faults.
        self.rng = _stable_seed(seed, spec.name, 0)
        # Fault randomness (bursts, spikes), one generator per fault.
        self.fault_rngs = [_stable_seed(seed, spec.name, 1 + i) for i in range(len(faults))]
        self.speed = self.set_point(0.0)
        self.opening = 1.0
        load = self._load(self.speed, 1.0)
        self.motor_temperature = self.profile.ambient + self.profile.motor_rise * load
        self.process_temperature = self.profile.ambient + self.profile.process_rise * load
        self.stuck: dict[int, float] = {}  # fault index -> the frozen value
        self.drift_ref: dict[int, float] = {}  # fault index -> the value at the drift's start

    def set_point(self, t: float) -> float:
        speeds = self.spec.speeds
        return speeds[int((t + self.spec.phase) // self.spec.hold) % len(speeds)]

    @staticmethod
    def _load(speed: float, opening: float) -> float:
        return speed**3 * (0.4 + 0.6 * opening)

    def step(self, t: float, dt: float) -> dict[str, float]:
        p = self.profile
        noise = self.rng.standard_normal(len(p.sensors))
        dropped = self.rng.random(len(p.sensors)) < self.spec.missing

        # Severity of each physical fault at time t (0 when inactive).
        sev = dict.fromkeys(FAULT_KINDS, 0.0)
        for fault in self.faults:
            if fault.active(t) and fault.kind not in SENSOR_FAULTS:
                ramp = {
                    "bearing_wear": fault.progress(t),
                    "cooling_failure": 1.0,
                    "imbalance": 1.0,
                    "valve_closure": min(1.0, (t - fault.start) / 20.0),
                    "cavitation": min(1.0, (t - fault.start) / 10.0),
                }[fault.kind]
                sev[fault.kind] = max(sev[fault.kind], ramp * fault.magnitude)

        # Speed follows its set-point with a 5 s lag; the valve closes to 45 % open.
        self.speed += (self.set_point(t) - self.speed) * min(1.0, dt / 5.0)
        opening_target = 1.0 - 0.55 * min(1.0, sev["valve_closure"])
        self.opening += (opening_target - self.opening) * min(1.0, dt / 3.0)
        s, q = self.speed, self.opening
        cav = sev["cavitation"]

        flow = p.flow * s * q * (1.0 - 0.12 * cav)
        pressure = p.pressure * s**2 * (1.0 + 0.35 * (1.0 - q**2)) * (1.0 - 0.3 * cav)
        load = self._load(s, q) * (1.0 - 0.08 * cav)
        current = p.idle_current + p.load_current * load
        voltage = p.voltage - 0.15 * current

        vibration = p.vibration * (0.3 + 0.7 * s**2)
        vibration *= 1.0 + 2.5 * sev["bearing_wear"] + 1.5 * sev["imbalance"]
        bursts = 0.0
        for i, fault in enumerate(self.faults):
            if fault.kind == "cavitation" and fault.active(t):
                rng = self.fault_rngs[i]
                hit, size = rng.random(), rng.exponential(1.0)
                if hit < 0.35:
                    bursts += cav * p.vibration * (1.0 + 2.0 * size)
        vibration_1 = vibration + bursts
        vibration_2 = 0.8 * vibration + 0.6 * bursts

        # Temperatures: first-order lags towards the load's equilibrium. Bearing wear adds
        # friction heat; a cooling failure cuts the heat removed to a fifth.
        cooling = 1.0 / (1.0 + 4.0 * min(1.0, sev["cooling_failure"]))
        motor_eq = p.ambient + (p.motor_rise * load + 12.0 * sev["bearing_wear"]) / cooling
        self.motor_temperature += (motor_eq - self.motor_temperature) * min(
            1.0, dt * cooling / p.motor_tau
        )
        # Pump fluid: warmed by the losses, more when throttled; fan and compressor: load.
        heat = 0.3 * s + 0.5 * (1.0 - q) + 0.4 * load if self.spec.kind == "pump" else load
        process_eq = p.ambient + p.process_rise * heat
        if self.spec.kind == "fan":  # bearing temperature: friction grows with wear
            process_eq += 15.0 * sev["bearing_wear"]
        self.process_temperature += (process_eq - self.process_temperature) * min(
            1.0, dt / p.process_tau
        )

        clean: dict[str, float] = {
            "current": current,
            "voltage": voltage,
            "vibration_1": vibration_1,
            "vibration_2": vibration_2,
            "flow": flow,
            "motor_temperature": self.motor_temperature,
        }
        if self.spec.kind == "compressor":
            suction = 1.0 - 0.05 * s * q
            clean["suction_pressure"] = suction
            clean["discharge_pressure"] = suction + pressure
            clean["discharge_temperature"] = self.process_temperature
        else:
            clean["pressure"] = pressure
            other = "fluid_temperature" if self.spec.kind == "pump" else "bearing_temperature"
            clean[other] = self.process_temperature

        values: dict[str, float] = {}
        for j, sensor in enumerate(p.sensors):
            values[sensor] = clean[sensor] + p.noise[sensor] * float(noise[j])
        self._sensor_faults(t, values)
        return {
            sensor: round(value, 6)
            for j, (sensor, value) in enumerate(values.items())
            if not dropped[j]
        }

    def _sensor_faults(self, t: float, values: dict[str, float]) -> None:
        for i, fault in enumerate(self.faults):
            if fault.kind not in SENSOR_FAULTS or not fault.active(t):
                continue
            sensor = fault.sensor or self.profile.default_fault_sensor[fault.kind]
            if fault.kind == "stuck_sensor":
                values[sensor] = self.stuck.setdefault(i, values[sensor])
            elif fault.kind == "sensor_drift":
                ref = abs(self.drift_ref.setdefault(i, values[sensor])) or 1.0
                values[sensor] += 0.25 * ref * fault.progress(t) * fault.magnitude
            else:  # spikes: about one reading in twelve is 1.6 to 3 times its value
                rng = self.fault_rngs[i]
                hit, factor = rng.random(), rng.uniform(1.6, 3.0)
                if hit < 0.08:
                    values[sensor] *= 1.0 + (factor - 1.0) * fault.magnitude


class Plant:
    """Machines stepped together on a common clock, with faults on a schedule."""

    def __init__(self, machines: list[MachineSpec], seed: int, faults: list[FaultSpec]) -> None:
        names = [m.name for m in machines]
        if len(set(names)) != len(names):
            raise ValueError("machine names must be unique")
        for fault in faults:
            if fault.machine not in names:
                raise ValueError(f"fault on unknown machine {fault.machine!r}")
        self.machines = list(machines)
        self.seed = seed
        self.faults = list(faults)

    def stream(
        self, start_ts: float, seconds: int, period: float = 1.0
    ) -> Iterator[tuple[str, float, dict[str, float]]]:
        """`(machine, ts, values)` for every machine at every `period` over `seconds`.
        A fresh, identical stream on every call; missing readings are absent from `values`."""
        if period <= 0:
            raise ValueError("period must be positive")
        state = [
            _Machine(m, self.seed, [f for f in self.faults if f.machine == m.name])
            for m in self.machines
        ]
        for i in range(math.ceil(seconds / period - 1e-9)):
            t = i * period
            for machine in state:
                values = machine.step(t, period)
                if values:
                    yield machine.spec.name, start_ts + t, values

    def truth(self, start_ts: float) -> list[tuple[str, str, float, float]]:
        """The fault schedule as `(machine, kind, start_ts, end_ts)`, in start order."""
        return sorted(
            (f.machine, f.kind, start_ts + f.start, start_ts + f.end) for f in self.faults
        )


# --- CLI ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.plant",
        description="Publish a simulated plant to MQTT, with faults and their ground truth "
        "on sim/truth/<machine>.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--machines", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="0: as fast as possible; X: X times real time (default 1)",
    )
    parser.add_argument("--duration", type=int, default=3600, help="seconds of event time")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between readings")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        type=parse_fault,
        metavar="MACHINE:KIND:START:DURATION[:SENSOR]",
        help=f"repeatable; kinds: {', '.join(FAULT_KINDS)}",
    )
    parser.add_argument("--payload", choices=("per-machine", "per-sensor"), default="per-machine")
    parser.add_argument("--topic-prefix", default="plant")
    return parser


def start_timestamp(now: float, duration: float, speed: float) -> float:
    """The first reading's timestamp, chosen so that no reading is ahead of the wall clock:
    `now - duration` as fast as possible, `now - duration·(1 - 1/speed)` faster than real
    time (the last reading lands at about now), `now` at real time or slower.

    >>> [start_timestamp(1000.0, 100, speed) for speed in (0, 4, 1)]
    [900.0, 925.0, 1000.0]
    """
    if speed <= 0:
        return now - duration
    if speed > 1:
        return now - duration * (1.0 - 1.0 / speed)
    return now


def main(argv: Sequence[str] | None = None) -> int:
    import orjson
    import paho.mqtt.client as paho

    from simulators.replay import connect

    args = build_parser().parse_args(argv)
    plant = Plant(default_machines(args.machines), args.seed, args.fault)
    start = start_timestamp(time.time(), args.duration, args.speed)
    prefix = args.topic_prefix
    client = connect(args.host, args.port, "aemon-plant-sim")
    pending: list[paho.MQTTMessageInfo] = []

    def publish(topic: str, payload: object) -> None:
        pending.append(client.publish(topic, orjson.dumps(payload), qos=1))
        if len(pending) >= 2000:  # bounded memory when publishing as fast as possible
            for info in pending[:1000]:
                info.wait_for_publish(30)
            del pending[:1000]

    events = sorted(
        [(f.start, 0, f.machine, f.kind, "start") for f in args.fault]
        + [(f.end, 1, f.machine, f.kind, "end") for f in args.fault]
    )
    log.info(
        "plant_started",
        machines=args.machines,
        seed=args.seed,
        start_ts=start,
        duration=args.duration,
        speed=args.speed,
        faults=len(args.fault),
    )
    wall0 = time.monotonic()
    t_end = float(args.duration)
    sent = 0
    try:
        for machine, ts, values in plant.stream(start, args.duration, args.period):
            t = ts - start
            while events and events[0][0] <= t:
                at, _, fm, kind, state = events.pop(0)
                doc = {"machine": fm, "fault": kind, "state": state, "ts": start + at}
                publish(f"sim/truth/{fm}", doc)
                log.info("truth", **doc)
            if args.speed > 0:
                delay = wall0 + t / args.speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if args.payload == "per-machine":
                publish(f"{prefix}/{machine}", {"ts": ts, "values": values})
            else:
                for sensor, value in values.items():
                    publish(f"{prefix}/{machine}/{sensor}", {"ts": ts, "value": value})
            sent += 1
        # Faults still running when the stream stops end with it (no truth from the future).
        for at, _, fm, kind, state in events:
            doc = {"machine": fm, "fault": kind, "state": state, "ts": start + min(at, t_end)}
            publish(f"sim/truth/{fm}", doc)
        for info in pending:
            info.wait_for_publish(30)
    except KeyboardInterrupt:
        pass
    finally:
        client.loop_stop()
        client.disconnect()
    log.info("plant_finished", rows=sent, seconds=round(time.monotonic() - wall0, 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The physics of each kind of machine: sensors, steady-state equations, lags, signatures.

The pump and the fan are centrifugal, so the affinity laws link their sensors: at relative
speed `s`, flow ∝ s, pressure (head) ∝ s², shaft power and load current ∝ s³. A throttling
valve moves the operating point along the machine's curve (less flow, more head, less
power). The screw compressor is positive-displacement: flow ∝ s into the network's
pressure, power ∝ flow · ln(pressure ratio). Temperatures are first-order lags towards the
heat balance of the load.

>>> from simulators.model import OpMode
>>> op = OpPoint(OpMode.RUN, 1.0)
>>> env = Env(ambient=25.0, voltage=0.0)
>>> full = PUMP.physics(op, Modifiers(), env, PUMP_LAG0)
>>> half = PUMP.physics(OpPoint(OpMode.RUN, 0.5), Modifiers(), env, PUMP_LAG0)
>>> round(half["flow"] / full["flow"], 3), round(half["pressure"] / full["pressure"], 3)
(0.5, 0.25)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from simulators.model import (
    SENSOR_FAULTS,
    Env,
    FaultKind,
    MachineKind,
    Modifiers,
    OpPoint,
    SensorSpec,
)

Physics = Callable[[OpPoint, Modifiers, Env, Mapping[str, float]], dict[str, float]]
F = FaultKind


@dataclass(frozen=True, slots=True)
class KindModel:
    """Everything the simulator knows about one kind of machine.

    `physics(op, mods, env, lagged)` returns each sensor's true value; for the sensors in
    `lags` it returns the equilibrium the lagged value moves towards (with that time
    constant in seconds), and `lagged` holds the current lagged values.
    `signatures[fault]` is the direction (+1 / -1) in which each named sensor moves."""

    kind: MachineKind
    sensors: tuple[SensorSpec, ...]
    physics: Physics
    lags: Mapping[str, float]
    setpoints: tuple[float, ...]
    idle_speed: float
    fault_sensor: Mapping[FaultKind, str]
    signatures: Mapping[FaultKind, Mapping[str, int]]

    @property
    def sensor_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sensors)

    @property
    def supported_faults(self) -> frozenset[FaultKind]:
        return frozenset(self.signatures) | SENSOR_FAULTS

    def sensor(self, name: str) -> SensorSpec:
        return next(s for s in self.sensors if s.name == name)


def _frozen(d: Mapping[FaultKind, Mapping[str, int]]) -> Mapping[FaultKind, Mapping[str, int]]:
    return MappingProxyType({k: MappingProxyType(dict(v)) for k, v in d.items()})


def _throttled_flow(shutoff: float, k_pump: float, k_system: float, valve: float) -> float:
    """Where the pump curve `H = shutoff - k_pump·Q²` meets the system curve
    `H = k_system·Q²/valve²`: a closing valve steepens the system curve."""
    return math.sqrt(shutoff / (k_pump + k_system / max(valve, 0.05) ** 2))


def _winding_factor(lagged: Mapping[str, float]) -> float:
    # A hot winding has more resistance and slip: the motor draws a little more current.
    return 1.0 + 0.004 * max(0.0, lagged["motor_temperature"] - 60.0)


# --- Pump: a SKAB-like rig, 230 V motor, 32 L/min at 4 bar shut-off head ----------------------

PUMP_FLOW = 32.0  # L/min at rated speed, valve open
PUMP_SHUTOFF = 4.0  # bar at rated speed, zero flow
PUMP_RATED_CURRENT = 2.0  # A


def _pump(op: OpPoint, m: Modifiers, env: Env, lagged: Mapping[str, float]) -> dict[str, float]:
    s, run = op.speed, float(op.running)
    shutoff = PUMP_SHUTOFF * s * s * (1.0 - 0.25 * m.cavitation)
    k_pump, k_system = 1.0 / PUMP_FLOW**2, 3.0 / PUMP_FLOW**2
    flow = s * _throttled_flow(
        PUMP_SHUTOFF * (1.0 - 0.25 * m.cavitation), k_pump, k_system, m.valve
    )
    pressure = shutoff - k_pump * flow**2
    ratio = flow / (PUMP_FLOW * s) if s > 0.02 else 1.0  # share of best-efficiency flow
    power = s**3 * (0.45 + 0.55 * ratio) * (1.0 + 0.15 * m.wear)  # per unit of rated
    voltage = 230.0 + env.voltage - 4.0 * power * run
    current = run * (0.5 + 1.5 * power * 230.0 / voltage) * _winding_factor(lagged)
    recirculation = 0.006 * (1.0 - ratio) * s * s  # low-flow recirculation shakes the casing
    bursts = m.burst * s
    return {
        "current": current,
        "voltage": voltage,
        "vibration_1": 0.008
        + 0.020 * s * s
        + recirculation
        + 0.05 * m.wear * s
        + 0.03 * m.imbalance * s * s
        + 0.04 * bursts,
        "vibration_2": 0.010
        + 0.028 * s * s
        + recirculation
        + 0.015 * m.wear * s
        + 0.05 * m.imbalance * s * s
        + 0.05 * bursts,
        "suction_pressure": 0.8 - 0.15 * (flow / PUMP_FLOW) ** 2 - m.suction_drop,
        "pressure": pressure,
        "flow": flow,
        "motor_temperature": env.ambient
        + 45.0 * (0.3 * run + 0.7 * (current / PUMP_RATED_CURRENT) ** 2) / m.cooling
        + 12.0 * m.wear * s,
        # The fluid takes the pump's losses, more of them when throttled.
        "fluid_temperature": env.ambient + 4.0 * power + 4.0 * (1.0 - ratio) * s**3,
    }


PUMP = KindModel(
    kind=MachineKind.PUMP,
    sensors=(
        SensorSpec("current", "A", 0.0, 10.0, 0.02),
        SensorSpec("voltage", "V", 180.0, 260.0, 0.6),
        SensorSpec("vibration_1", "g", 0.0, 0.5, 0.0008),
        SensorSpec("vibration_2", "g", 0.0, 0.5, 0.001),
        SensorSpec("suction_pressure", "bar", -1.0, 3.0, 0.008),
        SensorSpec("pressure", "bar", 0.0, 10.0, 0.02),
        SensorSpec("flow", "L/min", 0.0, 60.0, 0.25),
        SensorSpec("motor_temperature", "°C", -20.0, 200.0, 0.15),
        SensorSpec("fluid_temperature", "°C", -20.0, 120.0, 0.05),
    ),
    physics=_pump,
    lags=MappingProxyType({"motor_temperature": 180.0, "fluid_temperature": 600.0}),
    setpoints=(0.7, 0.85, 1.0),
    idle_speed=0.3,
    fault_sensor=MappingProxyType(
        {F.STUCK_SENSOR: "flow", F.SENSOR_DRIFT: "pressure", F.SPIKES: "current"}
    ),
    signatures=_frozen(
        {
            F.BEARING_WEAR: {
                "vibration_1": 1,
                "vibration_2": 1,
                "motor_temperature": 1,
                "current": 1,
            },
            F.VALVE_CLOSURE: {"flow": -1, "pressure": 1, "current": -1},
            F.CAVITATION: {
                "suction_pressure": -1,
                "vibration_1": 1,
                "vibration_2": 1,
                "flow": -1,
                "pressure": -1,
            },
            F.IMBALANCE: {"vibration_1": 1, "vibration_2": 1},
            F.COOLING_FAILURE: {"motor_temperature": 1, "current": 1},
        }
    ),
)
PUMP_LAG0: Mapping[str, float] = MappingProxyType(
    {"motor_temperature": 70.0, "fluid_temperature": 29.0}
)


# --- Fan: 7.5 kW, 400 V, 1450 rpm, 5000 m³/h at 800 Pa, damper on the duct ------------------

FAN_FLOW, FAN_SHUTOFF, FAN_RATED_CURRENT = 5000.0, 1100.0, 15.0


def _fan(op: OpPoint, m: Modifiers, env: Env, lagged: Mapping[str, float]) -> dict[str, float]:
    s, run = op.speed, float(op.running)
    k_fan, k_duct = 300.0 / FAN_FLOW**2, 800.0 / FAN_FLOW**2
    airflow = s * _throttled_flow(FAN_SHUTOFF, k_fan, k_duct, m.valve)
    ratio = airflow / (FAN_FLOW * s) if s > 0.02 else 1.0
    power = s**3 * (0.35 + 0.65 * ratio) * (1.0 + 0.15 * m.wear)
    current = run * (4.0 + 11.0 * power) * _winding_factor(lagged)
    return {
        "current": current,
        "speed": 1450.0 * s,
        "vibration": 0.6 + 1.4 * s * s + 4.0 * m.wear * s + 3.0 * m.imbalance * s * s,
        "airflow": airflow,
        "static_pressure": FAN_SHUTOFF * s * s - k_fan * airflow**2,
        "motor_temperature": env.ambient
        + 45.0 * (0.3 * run + 0.7 * (current / FAN_RATED_CURRENT) ** 2) / m.cooling,
        "bearing_temperature": env.ambient + 15.0 * s + 25.0 * m.wear * s,
    }


FAN = KindModel(
    kind=MachineKind.FAN,
    sensors=(
        SensorSpec("current", "A", 0.0, 40.0, 0.08),
        SensorSpec("speed", "rpm", 0.0, 1800.0, 3.0),
        SensorSpec("vibration", "mm/s", 0.0, 30.0, 0.04),
        SensorSpec("airflow", "m³/h", 0.0, 8000.0, 25.0),
        SensorSpec("static_pressure", "Pa", 0.0, 2000.0, 4.0),
        SensorSpec("motor_temperature", "°C", -20.0, 200.0, 0.15),
        SensorSpec("bearing_temperature", "°C", -20.0, 150.0, 0.1),
    ),
    physics=_fan,
    lags=MappingProxyType({"motor_temperature": 240.0, "bearing_temperature": 300.0}),
    setpoints=(0.6, 0.8, 1.0),
    idle_speed=0.3,
    fault_sensor=MappingProxyType(
        {F.STUCK_SENSOR: "airflow", F.SENSOR_DRIFT: "static_pressure", F.SPIKES: "current"}
    ),
    signatures=_frozen(
        {
            F.BEARING_WEAR: {"vibration": 1, "bearing_temperature": 1, "current": 1},
            F.VALVE_CLOSURE: {"airflow": -1, "static_pressure": 1, "current": -1},
            F.IMBALANCE: {"vibration": 1},
            F.COOLING_FAILURE: {"motor_temperature": 1, "current": 1},
        }
    ),
)


# --- Compressor: oil-injected screw, 22 kW on a VFD, 10 m³/min into a 7 bar network ----------

COMP_FLOW, COMP_PRESSURE, COMP_RATED_CURRENT = 10.0, 7.0, 40.0
NETWORK_PRESSURE = 6.8  # bar held by the rest of the network while this one is unloaded


def _compressor(
    op: OpPoint, m: Modifiers, env: Env, lagged: Mapping[str, float]
) -> dict[str, float]:
    s, run = op.speed, float(op.running)
    # Inlet throttling (valve_closure) starves the machine: less air, and the network
    # pressure it feeds sags because supply falls short of demand.
    flow = COMP_FLOW * s * m.valve if op.loaded else 0.0
    pressure = COMP_PRESSURE - 4.0 * (1.0 - m.valve) if op.loaded else NETWORK_PRESSURE
    work = (flow / COMP_FLOW) * math.log(pressure + 1.0) / math.log(COMP_PRESSURE + 1.0)
    power = run * (0.2 * s / 0.4 if not op.loaded else 0.2 + 0.8 * work) * (1.0 + 0.15 * m.wear)
    current = run * COMP_RATED_CURRENT * power * _winding_factor(lagged)
    oil = lagged["oil_temperature"]
    return {
        "current": current,
        "vibration": 1.0 + 1.6 * s * s + 3.0 * m.wear * s + 2.5 * m.imbalance * s * s,
        "flow": flow,
        "discharge_pressure": pressure,
        # Compression heat is carried off by the injected oil, which the oil cooler cools.
        "discharge_temperature": oil + 2.0 + 12.0 * flow / COMP_FLOW,
        "oil_temperature": env.ambient + 55.0 * power / m.cooling + 8.0 * m.wear * s,
        "motor_temperature": env.ambient
        + 50.0 * (0.3 * run + 0.7 * (current / COMP_RATED_CURRENT) ** 2)
        + 5.0 * m.wear * s,
    }


COMPRESSOR = KindModel(
    kind=MachineKind.COMPRESSOR,
    sensors=(
        SensorSpec("current", "A", 0.0, 100.0, 0.25),
        SensorSpec("vibration", "mm/s", 0.0, 30.0, 0.05),
        SensorSpec("flow", "m³/min", 0.0, 15.0, 0.05),
        SensorSpec("discharge_pressure", "bar", 0.0, 12.0, 0.02),
        SensorSpec("discharge_temperature", "°C", -20.0, 200.0, 0.2),
        SensorSpec("oil_temperature", "°C", -20.0, 200.0, 0.15),
        SensorSpec("motor_temperature", "°C", -20.0, 200.0, 0.15),
    ),
    physics=_compressor,
    lags=MappingProxyType(
        {"discharge_temperature": 30.0, "oil_temperature": 300.0, "motor_temperature": 240.0}
    ),
    setpoints=(0.6, 0.8, 1.0),
    idle_speed=0.4,
    fault_sensor=MappingProxyType(
        {F.STUCK_SENSOR: "flow", F.SENSOR_DRIFT: "discharge_pressure", F.SPIKES: "current"}
    ),
    signatures=_frozen(
        {
            F.BEARING_WEAR: {"vibration": 1, "oil_temperature": 1},
            F.VALVE_CLOSURE: {"flow": -1, "discharge_pressure": -1, "current": -1},
            F.IMBALANCE: {"vibration": 1},
            F.COOLING_FAILURE: {"oil_temperature": 1, "discharge_temperature": 1},
        }
    ),
)

KINDS: Mapping[MachineKind, KindModel] = MappingProxyType(
    {MachineKind.PUMP: PUMP, MachineKind.FAN: FAN, MachineKind.COMPRESSOR: COMPRESSOR}
)


def expected_signature(kind: MachineKind | str, fault: FaultKind | str) -> Mapping[str, int]:
    """The sensors a physical fault moves on a kind of machine, and in which direction.

    >>> dict(expected_signature("pump", "valve_closure"))
    {'flow': -1, 'pressure': 1, 'current': -1}
    """
    model = KINDS[MachineKind(kind)]
    return model.signatures.get(FaultKind(fault), MappingProxyType({}))

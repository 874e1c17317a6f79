"""The plant simulator: fault signatures, determinism, physics, schedules, truth, CLI."""

from __future__ import annotations

import doctest
import importlib
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from simulators.kinds import KINDS
from simulators.model import FaultKind, MachineKind, Modifiers, OpMode
from simulators.operation import Schedule
from simulators.plant import (
    FaultSpec,
    MachineSpec,
    Plant,
    Sample,
    TruthEvent,
    default_machines,
    expected_signature,
    load_faults,
    parse_fault,
)
from simulators.plant_cli import default_start, main

START, DURATION, LENGTH = 200, 300, 600  # the fault window and the stream, seconds
SEED = 3
Series = dict[str, np.ndarray]


def spec_of(kind: MachineKind) -> MachineSpec:
    """A machine that changes set-points but never stops: a fault always has an effect."""
    return MachineSpec(f"{kind.value}-1", kind, dwell_s=(90.0, 150.0), idle=False, stops=False)


def series(spec: MachineSpec, faults: list[FaultSpec], seed: int = SEED) -> Series:
    """Each sensor over LENGTH seconds, NaN where a reading was lost."""
    samples = list(Plant([spec], seed=seed, faults=faults).samples(0.0, LENGTH))
    assert len(samples) == LENGTH
    return {s: np.array([x.values.get(s, np.nan) for x in samples]) for s in spec.sensors}


def with_and_without(kind: MachineKind, fault: FaultKind, **kw: str) -> tuple[Series, Series]:
    spec = spec_of(kind)
    base = series(spec, [])
    faulty = series(spec, [FaultSpec(spec.name, fault, START, DURATION, **kw)])  # type: ignore[arg-type]
    for sensor in spec.sensors:  # before the fault, the very same readings
        np.testing.assert_array_equal(faulty[sensor][:START], base[sensor][:START])
    return base, faulty


PHYSICAL = [(k, f) for k, model in KINDS.items() for f in model.signatures]


@pytest.mark.parametrize(("kind", "fault"), PHYSICAL, ids=[f"{k}-{f}" for k, f in PHYSICAL])
def test_each_physical_fault_moves_the_sensors_its_physics_names(
    kind: MachineKind, fault: FaultKind
) -> None:
    base, faulty = with_and_without(kind, fault)
    late = slice(START + 3 * DURATION // 4, START + DURATION)  # the fault fully developed
    for sensor, direction in expected_signature(kind, fault).items():
        shift = np.nanmean(faulty[sensor][late] - base[sensor][late])
        noise = KINDS[kind].sensor(sensor).noise
        assert direction * shift > 2 * noise, (sensor, shift, noise)


def test_bearing_wear_rises_slowly() -> None:
    base, faulty = with_and_without(MachineKind.PUMP, FaultKind.BEARING_WEAR)
    excess = faulty["vibration_1"] - base["vibration_1"]
    early = np.nanmean(excess[START : START + 30])
    late = np.nanmean(excess[START + DURATION - 30 : START + DURATION])
    assert 0 <= early < 0.1 * late


def test_imbalance_is_a_step_that_ends_with_the_fault() -> None:
    base, faulty = with_and_without(MachineKind.PUMP, FaultKind.IMBALANCE)
    ratio = faulty["vibration_2"] / base["vibration_2"]
    assert np.nanmin(ratio[START : START + 5]) > 1.5
    np.testing.assert_array_equal(faulty["flow"], base["flow"])
    # Vibration has no lag: it is back to normal from the first step after the window.
    np.testing.assert_array_equal(
        faulty["vibration_1"][START + DURATION :], base["vibration_1"][START + DURATION :]
    )


def test_cavitation_drops_suction_and_shakes_in_bursts() -> None:
    base, faulty = with_and_without(MachineKind.PUMP, FaultKind.CAVITATION)
    window = slice(START + 60, START + DURATION - 60)
    assert np.nanmean(faulty["suction_pressure"][window]) < 0.3
    excess = (faulty["vibration_1"] - base["vibration_1"])[window]
    # Bursts: a share of the readings jump, the rest stay near normal.
    assert np.nanmax(excess) > 4 * np.nanmedian(excess)
    assert 0.1 < np.mean(excess > 0.02) < 0.7


def test_cooling_failure_runs_the_temperature_away() -> None:
    base, faulty = with_and_without(MachineKind.PUMP, FaultKind.COOLING_FAILURE)
    temp, end = faulty["motor_temperature"], START + DURATION - 1
    assert temp[end] > base["motor_temperature"][end] + 20
    assert temp[end] > temp[end - 100] + 3  # still climbing at the end of five minutes


def test_valve_closure_on_a_pump_is_skab_like() -> None:
    base, faulty = with_and_without(MachineKind.PUMP, FaultKind.VALVE_CLOSURE)
    mid = slice(START + 90, START + DURATION - 90)
    ratio = {s: np.nanmean(faulty[s][mid]) / np.nanmean(base[s][mid]) for s in base}
    assert ratio["flow"] < 0.7
    assert ratio["pressure"] > 1.1
    assert ratio["current"] < 0.9
    # It reopens at the end of the window: flow is back by then.
    assert abs(faulty["flow"][START + DURATION + 5] / base["flow"][START + DURATION + 5] - 1) < 0.05


@pytest.mark.parametrize("kind", list(MachineKind))
def test_stuck_sensor_is_a_flat_line_and_nothing_else_changes(kind: MachineKind) -> None:
    default = KINDS[kind].fault_sensor[FaultKind.STUCK_SENSOR]
    base, faulty = with_and_without(kind, FaultKind.STUCK_SENSOR)
    window = faulty[default][START : START + DURATION]
    assert len(set(window[~np.isnan(window)])) == 1
    assert window[~np.isnan(window)][0] == base[default][START - 1] or np.isnan(
        base[default][START - 1]
    )
    for sensor in base:
        if sensor != default:
            np.testing.assert_array_equal(faulty[sensor], base[sensor])


def test_stuck_sensor_on_a_chosen_sensor() -> None:
    base, faulty = with_and_without(MachineKind.PUMP, FaultKind.STUCK_SENSOR, sensor="voltage")
    window = faulty["voltage"][START : START + DURATION]
    assert len(set(window[~np.isnan(window)])) == 1
    assert np.nanstd(base["voltage"][START : START + DURATION]) > 0.3


def test_sensor_drift_is_a_growing_bias_on_one_sensor() -> None:
    base, faulty = with_and_without(MachineKind.COMPRESSOR, FaultKind.SENSOR_DRIFT)
    bias = faulty["discharge_pressure"] - base["discharge_pressure"]
    early = np.nanmean(bias[START : START + 30])
    late = np.nanmean(bias[START + DURATION - 30 : START + DURATION])
    assert late > 0.5
    assert late > 5 * early
    for sensor in base:
        if sensor != "discharge_pressure":
            np.testing.assert_array_equal(faulty[sensor], base[sensor])


def test_spikes_are_rare_large_readings() -> None:
    base, faulty = with_and_without(MachineKind.FAN, FaultKind.SPIKES, sensor="vibration")
    diff = np.abs(faulty["vibration"] - base["vibration"])[START : START + DURATION]
    spiked = diff > 0
    assert 3 <= spiked.sum() <= 0.15 * DURATION
    noise = KINDS[MachineKind.FAN].sensor("vibration").noise
    assert np.all(diff[spiked] > 20 * noise)  # a spike is large (downwards, it hits 0)


def test_every_fault_kind_exists_and_each_kind_has_the_physical_ones() -> None:
    assert {k.value for k in FaultKind} == {
        "bearing_wear",
        "valve_closure",
        "cavitation",
        "imbalance",
        "cooling_failure",
        "stuck_sensor",
        "sensor_drift",
        "spikes",
    }
    assert FaultKind.CAVITATION in KINDS[MachineKind.PUMP].supported_faults
    for model in KINDS.values():
        assert len(model.supported_faults) >= 7
        assert all(s in model.sensor_names for sig in model.signatures.values() for s in sig)


def test_a_fault_leaves_other_machines_alone() -> None:
    machines = default_machines(3)
    fault = FaultSpec("pump-1", FaultKind.CAVITATION, 10, 60)
    clean = [s for s in Plant(machines, seed=1).samples(0.0, 120) if s.machine != "pump-1"]
    faulty = Plant(machines, seed=1, faults=[fault]).samples(0.0, 120)
    assert clean == [s for s in faulty if s.machine != "pump-1"]


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    faults = [parse_fault("fan-1:imbalance:10:50"), parse_fault("pump-2:spikes:5:60")]
    a = list(Plant(6, seed=7, faults=faults).stream(1000.0, 120))
    b = list(Plant(6, seed=7, faults=faults).stream(1000.0, 120))
    c = list(Plant(6, seed=8, faults=faults).stream(1000.0, 120))
    assert a == b
    assert [r.value for r in a[:50]] != [r.value for r in c[:50]]
    plant = Plant(6, seed=7, faults=faults)
    assert list(plant.samples(0.0, 30)) == list(plant.samples(0.0, 30))  # restartable


def test_start_ts_only_shifts_the_timestamps() -> None:
    plant = Plant(2, seed=1)
    a, b = list(plant.samples(0.0, 50)), list(plant.samples(1_700_000_000.0, 50))
    assert [s.values for s in a] == [s.values for s in b]
    assert all(abs(y.ts - x.ts - 1_700_000_000.0) < 2e-3 for x, y in zip(a, b, strict=True))


def test_values_stay_in_physical_ranges_through_operating_changes() -> None:
    machines = default_machines(6, dwell_s=(60.0, 120.0))
    plant = Plant(machines, seed=2)
    modes: dict[str, set[OpMode]] = {}
    for m in machines:
        sched = Schedule(
            KINDS[m.kind].setpoints,
            0.3,
            m.dwell_s,
            idle=True,
            stops=True,
            rng=np.random.default_rng(0),
        )
        modes[m.name] = {seg.mode for seg in sched.cycle}
        assert modes[m.name] == set(OpMode)
    values: dict[tuple[str, str], list[float]] = {}
    for sample in plant.samples(0.0, 2 * 3600):
        for sensor, value in sample.values.items():
            values.setdefault((sample.machine, sensor), []).append(value)
    for (machine, name), series_ in values.items():
        sensor = KINDS[plant.machine(machine).kind].sensor(name)
        a = np.array(series_)
        assert np.all(np.isfinite(a)), (machine, name)
        assert sensor.low <= a.min(), (machine, name)
        assert a.max() <= sensor.high, (machine, name)
    flow = np.array(values[("pump-1", "flow")])
    current = np.array(values[("pump-1", "current")])
    temp = np.array(values[("pump-1", "motor_temperature")])
    assert flow.max() < 34
    assert np.mean(flow < 0.5) > 0.02
    assert current.max() < 2.3
    assert temp.max() < 80
    assert temp.min() > 15


def test_affinity_laws() -> None:
    from simulators.model import Env, OpPoint

    env = Env(25.0, 0.0)
    for model in (KINDS[MachineKind.PUMP], KINDS[MachineKind.FAN]):
        lag = {name: 60.0 for name in model.lags}
        full = model.physics(OpPoint(OpMode.RUN, 1.0), Modifiers(), env, lag)
        for s in (0.5, 0.8):
            part = model.physics(OpPoint(OpMode.RUN, s), Modifiers(), env, lag)
            flow = "flow" if "flow" in full else "airflow"
            press = "pressure" if "pressure" in full else "static_pressure"
            assert part[flow] / full[flow] == pytest.approx(s)
            assert part[press] / full[press] == pytest.approx(s**2)
    # Load current above the idle current follows speed³ (the pump: 0.5 A no-load).
    pump = KINDS[MachineKind.PUMP]
    lag = {"motor_temperature": 50.0, "fluid_temperature": 25.0}
    env0 = Env(25.0, 0.0)
    i1 = pump.physics(OpPoint(OpMode.RUN, 1.0), Modifiers(), env0, lag)["current"] - 0.5
    i8 = pump.physics(OpPoint(OpMode.RUN, 0.8), Modifiers(), env0, lag)["current"] - 0.5
    assert i8 / i1 == pytest.approx(0.8**3, rel=0.02)


def test_temperature_lags_the_load() -> None:
    spec = MachineSpec(
        "pump-1",
        MachineKind.PUMP,
        setpoints=(0.6, 1.0),
        dwell_s=(300.0, 300.0),
        idle=False,
        stops=False,
    )
    temp = series(spec, [])["motor_temperature"]
    steps = np.diff(temp[250:600])
    # The first-order lag: no jump at the set-point change, a steady climb or fall after it.
    assert np.nanmax(np.abs(steps)) < 2.0
    assert abs(np.nanmean(temp[590:600]) - np.nanmean(temp[290:300])) > 5.0


def test_set_points_repeat() -> None:
    spec = MachineSpec("fan-1", MachineKind.FAN, dwell_s=(100.0, 100.0))
    samples = Plant([spec], seed=1).samples(0.0, 3 * 3600)
    speed = np.array([s.values.get("speed", np.nan) for s in samples]) / 1450
    levels = np.round(speed[~np.isnan(speed)], 1)
    counts = {lvl: int(np.sum(levels == lvl)) for lvl in (0.0, 0.3, 0.6, 0.8, 1.0)}
    assert all(c > 200 for c in counts.values()), counts  # every point, over many cycles


def test_jitter_and_missing_readings() -> None:
    plant = Plant(3, seed=4, missing=0.01, jitter=0.05)
    samples = list(plant.samples(1000.0, 2000, period=0.5))
    pump = [s.ts for s in samples if s.machine == "pump-1"]
    offsets = np.array(pump) - (1000.0 + 0.5 * np.arange(len(pump)))
    assert 0.01 < np.std(offsets) < 0.05
    assert np.max(np.abs(offsets)) <= 0.125
    assert all(b > a for a, b in itertools.pairwise(pump))
    expected = sum(len(plant.machine(s.machine).sensors) for s in samples)
    lost = 1 - sum(len(s.values) for s in samples) / expected
    assert 0.005 < lost < 0.02
    exact = [s.ts for s in Plant(1, jitter=0.0).samples(0.0, 5, period=0.25)]
    assert exact == [
        0.0,
        0.25,
        0.5,
        0.75,
        1.0,
        1.25,
        1.5,
        1.75,
        2.0,
        2.25,
        2.5,
        2.75,
        3.0,
        3.25,
        3.5,
        3.75,
        4.0,
        4.25,
        4.5,
        4.75,
    ]


def test_truth_is_the_schedule_in_event_time() -> None:
    faults = [parse_fault("pump-1:bearing_wear:120:300"), parse_fault("fan-1:spikes:60:30")]
    plant = Plant(6, faults=faults)
    assert plant.truth(1000.0) == [
        TruthEvent("fan-1", "spikes", "start", 1060.0),
        TruthEvent("fan-1", "spikes", "end", 1090.0),
        TruthEvent("pump-1", "bearing_wear", "start", 1120.0),
        TruthEvent("pump-1", "bearing_wear", "end", 1420.0),
    ]
    # A stream of 200 s: the bearing wear ends with it.
    assert plant.truth(1000.0, 200)[-1] == TruthEvent("pump-1", "bearing_wear", "end", 1200.0)
    assert plant.active_faults("pump-1", 130) == [faults[0]]
    assert TruthEvent("m", "spikes", "end", 5.0).to_dict() == {
        "machine": "m",
        "fault": "spikes",
        "state": "end",
        "ts": 5.0,
    }


def test_events_put_the_truth_before_the_first_faulty_sample() -> None:
    plant = Plant(2, seed=1, faults=[parse_fault("fan-1:imbalance:3:2")], jitter=0.0)
    items = list(plant.events(100.0, 6))
    kinds = [(type(i).__name__, i.ts, getattr(i, "state", "")) for i in items]
    start = kinds.index(("TruthEvent", 103.0, "start"))
    assert kinds[start + 1] == ("Sample", 103.0, "")
    assert kinds[start - 1] == ("Sample", 102.0, "")
    assert [k for k in kinds if k[0] == "TruthEvent"] == [
        ("TruthEvent", 103.0, "start"),
        ("TruthEvent", 105.0, "end"),
    ]
    assert sum(isinstance(i, Sample) for i in items) == 12


def test_fault_specs_from_strings_and_toml(tmp_path: Path) -> None:
    f = parse_fault("pump-1:stuck_sensor:60:30:sensor=pressure,severity=0.5")
    assert f == FaultSpec("pump-1", FaultKind.STUCK_SENSOR, 60.0, 30.0, "pressure", 0.5)
    path = tmp_path / "faults.toml"
    path.write_text(
        '[[fault]]\nmachine = "pump-1"\nkind = "bearing_wear"\nstart_s = 120\nduration_s = 300\n'
        '[[fault]]\nmachine = "fan-1"\nkind = "spikes"\nstart_s = 0\nduration_s = 10\n'
        'sensor = "vibration"\nseverity = 2.0\n'
    )
    assert load_faults(path) == [
        FaultSpec("pump-1", FaultKind.BEARING_WEAR, 120.0, 300.0),
        FaultSpec("fan-1", FaultKind.SPIKES, 0.0, 10.0, "vibration", 2.0),
    ]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: parse_fault("pump-1:meltdown:0:10"), "unknown fault kind"),
        (lambda: parse_fault("pump-1:spikes"), "machine:kind"),
        (lambda: parse_fault("pump-1:spikes:0:10:colour=red"), "options"),
        (lambda: parse_fault("pump-1:spikes:-1:10"), "start >= 0"),
        (lambda: Plant(6, faults=[parse_fault("pump-9:spikes:0:10")]), "unknown machine"),
        (lambda: Plant(6, faults=[parse_fault("fan-1:cavitation:0:10")]), "not a fault of"),
        (lambda: Plant(6, faults=[parse_fault("pump-1:spikes:0:10:sensor=rpm")]), "no sensor"),
        (lambda: Plant(6, faults=[parse_fault("pump-1:imbalance:0:9:sensor=flow")]), "no sensor"),
        (lambda: MachineSpec("x", "boiler"), "boiler"),  # type: ignore[arg-type]
        (lambda: Plant([MachineSpec("a", MachineKind.FAN)] * 2), "unique"),
    ],
)
def test_invalid_specs_are_rejected(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


def test_default_start_keeps_event_time_behind_the_wall_clock() -> None:
    now, duration = 10_000.0, 600.0
    for speed in (0.0, 0.5, 1.0, 4.0, 100.0):
        start = default_start(now, duration, speed)
        # The reading at event time start + t is sent at wall time now + t / speed.
        for t in (0.0, duration / 2, duration):
            sent_at = now if speed == 0 else now + t / speed
            assert start + t <= sent_at + 1e-6


def test_cli_prints_both_payload_forms_and_the_truth(capsys: pytest.CaptureFixture[str]) -> None:
    common = [
        "--machines",
        "2",
        "--speed",
        "0",
        "--duration",
        "4",
        "--start",
        "1000",
        "--stdout",
        "--fault",
        "fan-1:imbalance:1:2",
        "--seed",
        "5",
    ]
    assert main([*common, "--payload", "per-machine"]) == 0
    lines = [ln.split(" ", 1) for ln in capsys.readouterr().out.splitlines()]
    topics = [t for t, _ in lines]
    assert topics.count("plant/pump-1") == 4
    assert topics.count("plant/fan-1") == 4
    truth = [orjson.loads(p) for t, p in lines if t == "sim/truth/fan-1"]
    assert truth == [
        {"machine": "fan-1", "fault": "imbalance", "state": "start", "ts": 1001.0},
        {"machine": "fan-1", "fault": "imbalance", "state": "end", "ts": 1003.0},
    ]
    first = orjson.loads(lines[0][1])
    assert abs(first["ts"] - 1000.0) < 0.25
    assert set(first["values"]) <= set(KINDS[MachineKind.PUMP].sensor_names)
    assert main([*common, "--payload", "per-sensor"]) == 0
    sensor_lines = [ln.split(" ", 1) for ln in capsys.readouterr().out.splitlines()]
    per_sensor = [(t, orjson.loads(p)) for t, p in sensor_lines if t.startswith("plant/")]
    assert per_sensor[0][0] == "plant/pump-1/current"
    assert set(per_sensor[0][1]) == {"ts", "value"}
    # The same readings either way.
    assert len(per_sensor) == sum(
        len(orjson.loads(p)["values"]) for t, p in lines if t[:6] == "plant/"
    )


def test_cli_rejects_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--fault", "pump-1:meltdown:0:1"])
    assert "unknown fault kind" in capsys.readouterr().err
    assert main(["--fault", "pump-9:spikes:0:1", "--stdout", "--duration", "1"]) == 2
    assert main(["--speed", "0", "--stdout"]) == 2  # endless and faster than real time
    assert main(["--list", "--machines", "1"]) == 0
    assert "suction_pressure" in capsys.readouterr().out


def test_python_m_simulators_plant_runs_the_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "simulators.plant", "--list", "--machines", "1"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    ).stdout
    assert "pump-1 (pump)" in out
    assert "suction_pressure" in out


@pytest.mark.parametrize(
    "module",
    ["faults", "kinds", "machine", "operation", "plant", "plant_cli", "publish", "replay"],
)
def test_doctests(module: str) -> None:
    # pytest's --doctest-modules covers tests/ and service/ only: run the simulators' here.
    mod = importlib.import_module(f"simulators.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0

from __future__ import annotations

import numpy as np
import pytest

from simulators.plant import (
    FAULT_KINDS,
    FaultSpec,
    Plant,
    default_machines,
    parse_fault,
    start_timestamp,
)

MACHINES = default_machines(6)
START, END = 200, 500  # the fault window, seconds from the stream's start


def series(machine: str, faults: list[FaultSpec], seed: int = 1) -> dict[str, np.ndarray]:
    """Each sensor of `machine` over 600 s, NaN where a reading is missing."""
    rows = [v for m, _, v in Plant(MACHINES, seed, faults).stream(0.0, 600) if m == machine]
    assert len(rows) == 600
    sensors = next(s for s in MACHINES if s.name == machine).sensors
    return {s: np.array([row.get(s, np.nan) for row in rows]) for s in sensors}


def change(kind: str, machine: str = "pump-1", **kw: str) -> dict[str, float]:
    """Mean change of each sensor over the fault window, relative to the same seed without
    the fault."""
    base = series(machine, [])
    fault = series(machine, [FaultSpec(machine, kind, START, END - START, **kw)])
    out = {}
    for s, a in base.items():
        b = fault[s]
        out[s] = float((np.nanmean(b[START:END]) - np.nanmean(a[START:END])) / np.nanmean(a))
        # Before the fault, the readings are exactly those of the fault-free stream.
        np.testing.assert_array_equal(a[:START], b[:START])
    return out


def test_bearing_wear_raises_vibration_and_motor_temperature_slowly() -> None:
    d = change("bearing_wear")
    assert d["vibration_1"] > 0.5
    assert d["vibration_2"] > 0.5
    assert d["motor_temperature"] > 0.02
    assert abs(d["flow"]) < 1e-9
    assert abs(d["pressure"]) < 1e-9
    faulty = series("pump-1", [FaultSpec("pump-1", "bearing_wear", START, END - START)])
    base = series("pump-1", [])
    excess = faulty["vibration_1"] - base["vibration_1"]
    # Slow: small early in the window, large late in it.
    assert np.nanmean(excess[START : START + 30]) < 0.25 * np.nanmean(excess[END - 30 : END])


def test_valve_closure_lowers_flow_and_current_and_raises_pressure() -> None:
    d = change("valve_closure")
    assert d["flow"] < -0.3
    assert d["pressure"] > 0.1
    assert d["current"] < -0.1


def test_cavitation_lowers_pressure_and_makes_vibration_bursts() -> None:
    d = change("cavitation")
    assert d["pressure"] < -0.15
    assert d["vibration_1"] > 0.3
    base = series("pump-1", [])["vibration_1"][START:END]
    faulty = series("pump-1", [FaultSpec("pump-1", "cavitation", START, END - START)])
    excess = faulty["vibration_1"][START:END] - base
    # Bursts: some readings jump, many do not.
    assert np.nanmax(excess) > 3 * np.nanmedian(excess)


def test_imbalance_is_a_vibration_step() -> None:
    d = change("imbalance")
    assert d["vibration_1"] > 1.0
    assert d["vibration_2"] > 1.0
    base = series("pump-1", [])["vibration_1"]
    faulty = series("pump-1", [FaultSpec("pump-1", "imbalance", START, END - START)])
    ratio = faulty["vibration_1"] / base
    assert np.nanmin(ratio[START : START + 5]) > 2.0  # at once, not a ramp
    np.testing.assert_allclose(ratio[END:], 1.0)  # and gone after the window


def test_cooling_failure_runs_motor_temperature_away() -> None:
    d = change("cooling_failure")
    assert d["motor_temperature"] > 0.2
    assert all(abs(v) < 1e-9 for s, v in d.items() if s != "motor_temperature")
    temp = series("pump-1", [FaultSpec("pump-1", "cooling_failure", START, END - START)])
    assert temp["motor_temperature"][END - 1] > temp["motor_temperature"][START] + 30


def test_stuck_sensor_is_flat() -> None:
    faulty = series("pump-1", [FaultSpec("pump-1", "stuck_sensor", START, END - START)])
    window = faulty["flow"][START:END]
    assert len(set(window[~np.isnan(window)])) == 1
    assert np.nanstd(series("pump-1", [])["flow"][START:END]) > 1.0
    assert np.nanstd(faulty["pressure"][START:END]) > 0.0
    other = series(
        "pump-1", [FaultSpec("pump-1", "stuck_sensor", START, END - START, sensor="pressure")]
    )
    stuck = other["pressure"][START:END]
    assert len(set(stuck[~np.isnan(stuck)])) == 1


def test_sensor_drift_is_a_growing_bias_on_one_sensor() -> None:
    d = change("sensor_drift")
    assert d["pressure"] > 0.05
    assert all(abs(v) < 1e-9 for s, v in d.items() if s != "pressure")
    bias = (
        series("pump-1", [FaultSpec("pump-1", "sensor_drift", START, END - START)])["pressure"]
        - series("pump-1", [])["pressure"]
    )
    assert np.nanmean(bias[END - 30 : END]) > 5 * abs(np.nanmean(bias[START : START + 30]))


def test_spikes_are_rare_large_readings() -> None:
    d = change("spikes", sensor="vibration_2")
    assert d["vibration_2"] > 0.02
    ratio = (
        series("pump-1", [FaultSpec("pump-1", "spikes", START, END - START, sensor="vibration_2")])[
            "vibration_2"
        ]
        / series("pump-1", [])["vibration_2"]
    )[START:END]
    spiked = ratio > 1.5
    assert 3 <= spiked.sum() <= 0.3 * len(ratio)
    np.testing.assert_allclose(ratio[~spiked & ~np.isnan(ratio)], 1.0)


@pytest.mark.parametrize("kind", ["valve_closure", "cavitation", "bearing_wear"])
def test_faults_work_on_fans_and_compressors(kind: str) -> None:
    for machine in ("fan-1", "compressor-1"):
        d = change(kind, machine=machine)
        assert max(abs(v) for v in d.values()) > 0.05


def test_every_fault_kind_is_covered() -> None:
    assert set(FAULT_KINDS) == {
        "bearing_wear",
        "valve_closure",
        "cavitation",
        "imbalance",
        "cooling_failure",
        "stuck_sensor",
        "sensor_drift",
        "spikes",
    }


def test_physics_follows_the_affinity_laws() -> None:
    pump = series("pump-1", [])
    # Steady points near the end of each 60 s hold, no noise-free access: use means.
    flow, pressure = pump["flow"], pump["pressure"]
    current = pump["current"]
    spec = MACHINES[0]
    holds = [(k * 60 + 30, k * 60 + 58) for k in range(3)]
    speeds = [spec.speeds[(k * 60 + int(spec.phase)) // 60 % 3] for k in range(3)]
    for (a, b), s in zip(holds, speeds, strict=True):
        assert np.nanmean(flow[a:b]) == pytest.approx(50.0 * s, rel=0.02)
        assert np.nanmean(pressure[a:b]) == pytest.approx(4.0 * s**2, rel=0.02)
        assert np.nanmean(current[a:b]) == pytest.approx(2.0 + 14.0 * s**3, rel=0.02)


def test_temperature_lags_the_load() -> None:
    temp = series("pump-1", [])["motor_temperature"]
    # The speed steps up at 60 s: the temperature climbs over the following minute.
    assert np.nanmean(temp[60:65]) < np.nanmean(temp[110:119]) - 1.0


def test_set_points_repeat_and_readings_go_missing() -> None:
    pump = series("pump-1", [])
    flow = pump["flow"]
    assert np.nanmean(flow[30:58]) == pytest.approx(np.nanmean(flow[210:238]), rel=0.02)
    rows = [v for _, _, v in Plant(MACHINES, 1, []).stream(0.0, 3000)]
    missing = sum(len(MACHINES[i % 6].sensors) - len(v) for i, v in enumerate(rows))
    assert 0 < missing < 0.01 * sum(len(v) for v in rows)


def test_same_seed_same_stream_and_other_seed_differs() -> None:
    faults = [FaultSpec("fan-1", "cavitation", 10, 50), FaultSpec("pump-2", "spikes", 5, 60)]
    a = list(Plant(MACHINES, 3, faults).stream(1000.0, 120))
    b = list(Plant(MACHINES, 3, faults).stream(1000.0, 120))
    c = list(Plant(MACHINES, 4, faults).stream(1000.0, 120))
    assert a == b
    assert a != c
    plant = Plant(MACHINES, 3, faults)
    assert list(plant.stream(0.0, 50)) == list(plant.stream(0.0, 50))  # restartable


def test_stream_timestamps_and_period() -> None:
    rows = list(Plant(default_machines(2), 1, []).stream(500.0, 10, period=0.5))
    assert [t for m, t, _ in rows if m == "pump-1"] == [500.0 + 0.5 * i for i in range(20)]
    assert {m for m, _, _ in rows} == {"pump-1", "fan-1"}


def test_truth_is_the_fault_schedule() -> None:
    plant = Plant(
        MACHINES,
        1,
        [parse_fault("pump-1:bearing_wear:120:300"), parse_fault("fan-1:stuck_sensor:60:30:flow")],
    )
    assert plant.truth(1000.0) == [
        ("fan-1", "stuck_sensor", 1060.0, 1090.0),
        ("pump-1", "bearing_wear", 1120.0, 1420.0),
    ]


def test_invalid_specs_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultSpec("pump-1", "meltdown", 0, 10)
    with pytest.raises(ValueError, match="unknown machine"):
        Plant(MACHINES, 1, [FaultSpec("pump-9", "spikes", 0, 10)])
    with pytest.raises(ValueError, match="no sensor"):
        list(Plant(MACHINES, 1, [FaultSpec("pump-1", "spikes", 0, 10, sensor="rpm")]).stream(0, 1))
    with pytest.raises(ValueError, match="machine:kind"):
        parse_fault("pump-1:spikes")


def test_start_timestamp_keeps_readings_out_of_the_future() -> None:
    now = 10_000.0
    for speed in (0.0, 0.5, 1.0, 4.0, 100.0):
        start = start_timestamp(now, 600, speed)
        # The last reading is sent at wall time now + 600/speed (or ~now when as fast as
        # possible) and carries start + 599: never ahead of the wall clock.
        sent_at = now if speed == 0 else now + 599 / speed
        assert start + 599 <= sent_at + 1e-6


def test_cli_options_parse() -> None:
    from simulators.plant import build_parser

    args = build_parser().parse_args(
        [
            "--port",
            "1884",
            "--machines",
            "3",
            "--seed",
            "2",
            "--speed",
            "0",
            "--duration",
            "60",
            "--fault",
            "pump-1:bearing_wear:120:300",
            "--fault",
            "fan-1:spikes:0:5:current",
            "--payload",
            "per-sensor",
        ]
    )
    assert (args.port, args.machines, args.seed, args.speed, args.duration) == (1884, 3, 2, 0, 60)
    assert [f.kind for f in args.fault] == ["bearing_wear", "spikes"]
    assert args.fault[1].sensor == "current"
    assert args.payload == "per-sensor"

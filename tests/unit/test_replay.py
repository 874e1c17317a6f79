from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from simulators.replay import machine_name, parse_time, read_skab, sanitize

VALVE = Path(__file__).parent.parent / "data" / "skab" / "valve1" / "0.csv"
SENSORS = {
    "accelerometer1rms",
    "accelerometer2rms",
    "current",
    "pressure",
    "temperature",
    "thermocouple",
    "voltage",
    "volume_flow_raterms",
}


def test_reads_the_skab_file() -> None:
    rows = read_skab(VALVE)
    # The file has a header and 1,147 data rows (counted with the csv module).
    assert len(rows) == 1147
    first_ts, first = rows[0]
    assert first_ts == datetime(2020, 3, 9, 10, 14, 33, tzinfo=UTC).timestamp()
    assert first_ts == 1583748873.0
    assert set(first) == SENSORS
    assert first["current"] == pytest.approx(1.3302)
    assert first["volume_flow_raterms"] == pytest.approx(32.0)
    assert rows[-1][0] == datetime(2020, 3, 9, 10, 34, 32, tzinfo=UTC).timestamp()
    assert all(set(values) == SENSORS for _, values in rows)
    assert all(math.isfinite(v) for _, values in rows for v in values.values())
    times = [ts for ts, _ in rows]
    assert times == sorted(times)


def test_labels_and_blank_cells_are_left_out(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text(
        "datetime;Pump Speed (rpm);Flow-1;anomaly;changepoint\r\n"
        "2020-03-09 10:14:33;1450;;0.0;0.0\r\n"
        "2020-03-09 10:14:34;1451;nan;1.0;1.0\r\n"
        "\r\n"
    )
    assert read_skab(path) == [
        (1583748873.0, {"pump_speed_rpm": 1450.0}),
        (1583748874.0, {"pump_speed_rpm": 1451.0}),
    ]


def test_sanitize_and_names() -> None:
    assert sanitize("Volume Flow RateRMS") == "volume_flow_raterms"
    assert sanitize(" Pump Speed (rpm) ") == "pump_speed_rpm"
    assert sanitize("a--b") == "a_b"
    assert parse_time("2020-03-09 10:14:33") == 1583748873.0
    assert machine_name(VALVE) == "valve1-0"


def test_a_file_without_datetime_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "y.csv"
    path.write_text("time;a\n1;2\n")
    with pytest.raises(ValueError, match="datetime"):
        read_skab(path)

"""CSV replay: the SKAB and NAB readers, truth from labels, pacing, and the CLI."""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from simulators import publish
from simulators.model import TruthEvent
from simulators.publish import Pacer
from simulators.replay import CsvRow, label_truth, parse_timestamp, read_csv, replay, run, sanitize

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


class ListSink:
    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, object], int]] = []

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self.messages.append((topic, orjson.loads(payload), qos))

    def close(self) -> None:
        pass


def test_reads_the_skab_file() -> None:
    rows = read_csv(VALVE)
    assert len(rows) == 1147  # 1,148 lines: a header and 1,147 data rows
    first, last = rows[0], rows[-1]
    assert first.ts == datetime(2020, 3, 9, 10, 14, 33, tzinfo=UTC).timestamp() == 1583748873.0
    assert last.ts == datetime(2020, 3, 9, 10, 34, 32, tzinfo=UTC).timestamp()
    assert first.values["current"] == 1.3302
    assert first.values["volume_flow_raterms"] == 32.0
    assert first.values["accelerometer1rms"] == 0.0265878
    assert all(set(r.values) == SENSORS for r in rows)
    assert all(set(r.labels) == {"anomaly", "changepoint"} for r in rows)
    assert all(math.isfinite(v) for r in rows for v in r.values.values())
    assert [r.ts for r in rows] == sorted(r.ts for r in rows)
    anomalous = [i for i, r in enumerate(rows) if r.labels["anomaly"] == 1.0]
    # One contiguous anomaly (the closed valve), as the dataset's README describes.
    assert anomalous == list(range(anomalous[0], anomalous[-1] + 1))
    assert 566 <= anomalous[0] <= 578
    assert sum(r.labels["changepoint"] for r in rows) == 4


def test_truth_from_the_labels() -> None:
    rows = read_csv(VALVE)
    first = next(r for r in rows if r.labels["anomaly"] == 1.0)
    after = next(r for r in rows if r.ts > first.ts and r.labels["anomaly"] == 0.0)
    assert label_truth(rows, "valve1") == [
        TruthEvent("valve1", "anomaly", "start", first.ts),
        TruthEvent("valve1", "anomaly", "end", after.ts),
    ]
    ends_faulty = [CsvRow(1.0, {}, {"anomaly": 1.0}), CsvRow(2.0, {}, {"anomaly": 1.0})]
    assert [e.state for e in label_truth(ends_faulty, "m")] == ["start", "end"]
    assert label_truth([CsvRow(1.0, {"a": 1.0})], "m") == []


def test_reads_a_nab_file(tmp_path: Path) -> None:
    path = tmp_path / "machine_temperature.csv"
    path.write_text("timestamp,value\n2013-12-02 21:15:00,73.967\n2013-12-02 21:20:00,74.9\n")
    assert read_csv(path) == [
        CsvRow(1386018900.0, {"value": 73.967}),
        CsvRow(1386019200.0, {"value": 74.9}),
    ]


def test_blank_nan_and_label_cells(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(
        b"\xef\xbb\xbfdatetime;Pump Speed (rpm);Flow-1;anomaly;changepoint\r\n"
        b"2020-03-09 10:14:33;1450;;0.0;0.0\r\n"
        b"2020-03-09 10:14:34;1451;nan;1.0;1.0\r\n"
        b"\r\n"
    )
    assert read_csv(path) == [
        CsvRow(1583748873.0, {"pump_speed_rpm": 1450.0}, {"anomaly": 0.0, "changepoint": 0.0}),
        CsvRow(1583748874.0, {"pump_speed_rpm": 1451.0}, {"anomaly": 1.0, "changepoint": 1.0}),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("when;a\n1;2\n", "no time column"),
        ("datetime;A b;a-b\n2020-01-01 00:00:00;1;2\n", "clash"),
        ("datetime;a\n2020-01-01 00:00:00;1\n2020-01-01 00:00:01;x\n", r"x\.csv:3"),
        ("datetime;a\nyesterday;1\n", r"x\.csv:2"),
    ],
)
def test_bad_files_are_rejected_with_a_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "x.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_csv(path)


def test_names_and_times() -> None:
    assert sanitize("Volume Flow RateRMS") == "volume_flow_raterms"
    assert sanitize("Accelerometer1RMS") == "accelerometer1rms"
    assert sanitize(" Pump Speed (rpm) ") == "pump_speed_rpm"
    assert parse_timestamp("2020-03-09 10:14:33") == 1583748873.0  # naive: UTC
    assert parse_timestamp("2020-03-09T10:14:33Z") == 1583748873.0
    assert parse_timestamp("2020-03-09 12:14:33+02:00") == 1583748873.0
    assert parse_timestamp("1583748873.25") == 1583748873.25


def test_replay_sends_the_files_own_timestamps_and_the_truth() -> None:
    rows = read_csv(VALVE)
    sink = ListSink()
    assert replay(rows, "valve1-0", sink, speed=0, qos=1) == len(rows)
    readings = [(p, q) for t, p, q in sink.messages if t == "plant/valve1-0"]
    assert [p["ts"] for p, _ in readings] == [r.ts for r in rows]
    assert readings[0][0]["values"] == rows[0].values
    assert readings[0][1] == 1
    truth = [(i, p) for i, (t, p, _) in enumerate(sink.messages) if t == "sim/truth/valve1-0"]
    assert [p["state"] for _, p in truth] == ["start", "end"]
    # The start comes just before the first anomalous row.
    first = next(r for r in rows if r.labels["anomaly"] == 1.0)
    assert sink.messages[truth[0][0] + 1][1]["ts"] == first.ts == truth[0][1]["ts"]


def test_replay_shift_prefix_and_no_truth() -> None:
    rows = [CsvRow(100.0, {"a": 1.0}, {"anomaly": 1.0}), CsvRow(101.0, {"a": 2.0})]
    sink = ListSink()
    replay(rows, "m", sink, speed=0, prefix="lab", shift=1000.0, truth=False)
    assert sink.messages == [
        ("lab/m", {"ts": 1100.0, "values": {"a": 1.0}}, 0),
        ("lab/m", {"ts": 1101.0, "values": {"a": 2.0}}, 0),
    ]


def test_pacer_follows_event_time_at_the_speed_factor() -> None:
    pacer = Pacer(speed=50.0)
    t0 = time.monotonic()
    for ts in (1000.0, 1001.0, 1002.0, 1005.0):  # 5 s of event time = 0.1 s at 50x
        assert pacer.wait(ts)
    elapsed = time.monotonic() - t0
    assert 0.095 <= elapsed < 1.0
    fast = Pacer(speed=0.0)
    t0 = time.monotonic()
    assert all(fast.wait(ts) for ts in (0.0, 1e6))
    assert time.monotonic() - t0 < 0.05


class StoppedClock:
    """The pacer's clock, moved by its waits and by the test's pauses."""

    def __init__(self) -> None:
        self.now = 100.0
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.now


class ClockStop(threading.Event):
    def __init__(self, clock: StoppedClock) -> None:
        super().__init__()
        self.clock = clock

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.clock.waits.append(round(timeout, 6))
        self.clock.now += timeout
        return False


def test_pacer_goes_on_at_its_pace_after_a_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = StoppedClock()
    monkeypatch.setattr(publish, "time", clock)
    pacer = Pacer(speed=10.0, stop=ClockStop(clock))
    assert pacer.wait(1000.0)
    assert pacer.wait(1010.0)  # 1 s at x10
    clock.now += 30.0  # stopped (SIGSTOP) for 30 s
    assert pacer.wait(1020.0)  # due long ago: sent now, and the pace starts from it
    assert pacer.wait(1030.0)
    assert publish.MAX_LATE_S > 1.5
    clock.now += 1.5  # a short delay is caught up: 1040 goes at once, 1050 on time
    assert pacer.wait(1040.0)
    assert pacer.wait(1050.0)
    # Without the new start, 1030 and everything after it would have gone at once.
    assert clock.waits == [1.0, 1.0, 0.5]


def test_cli_replays_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert run([str(VALVE), "--stdout", "--speed", "0", "--machine", "valve1-0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    topics = [ln.split(" ", 1)[0] for ln in lines]
    assert topics.count("plant/valve1-0") == 1147
    assert topics.count("sim/truth/valve1-0") == 2
    assert run([str(VALVE), "--stdout", "--speed", "0", "--start", "2000000000"]) == 0
    topic, payload = capsys.readouterr().out.splitlines()[0].split(" ", 1)
    assert topic == "plant/0"  # the machine defaults to the file's stem
    assert orjson.loads(payload)["ts"] == 2000000000.0

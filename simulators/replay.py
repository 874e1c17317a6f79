"""Replay labelled CSV files to MQTT with their own timestamps, at a speed factor.

Formats, told apart by the header's separator:
- SKAB: `;`-separated, a `datetime` column (`YYYY-MM-DD hh:mm:ss`), sensor columns, and the
  labels `anomaly` and `changepoint`.
- NAB: `,`-separated, `timestamp,value`.

Timestamps without a time zone (both formats have none) are read as UTC: SKAB's are the
local time of an unnamed zone, so only the intervals between rows mean anything. A timestamp
with an offset keeps it; a bare number is Unix seconds. Sensor names are the column names
sanitised (`Volume Flow RateRMS` -> `volume_flow_raterms`). Label columns are not sent as
sensors; `anomaly` becomes ground truth on `sim/truth/<machine>` instead.

    python -m simulators.replay --port 1883 --speed 0 tests/data/skab/valve1/0.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import orjson
import structlog

from simulators.model import TruthEvent
from simulators.publish import (
    TRUTH_TOPIC,
    Pacer,
    Sink,
    configure_logging,
    machine_payload,
    open_sink,
    stop_on_signals,
)

log = structlog.get_logger("simulators.replay")

TIME_COLUMNS = ("datetime", "timestamp", "time", "date", "ts")
LABEL_COLUMNS = frozenset({"anomaly", "changepoint", "label", "is_anomaly"})
TRUTH_LABEL = "anomaly"


@dataclass(frozen=True, slots=True)
class CsvRow:
    """One data row: Unix seconds, the sensors' values (empty and NaN cells left out) and
    the labels, e.g. `{"anomaly": 1.0, "changepoint": 0.0}`."""

    ts: float
    values: dict[str, float]
    labels: dict[str, float] = field(default_factory=dict)


def sanitize(name: str) -> str:
    """A sensor name for topics and payloads: lower case, every run of characters other than
    letters and digits becomes one `_`, none at either end.

    >>> sanitize("Volume Flow RateRMS"), sanitize("Accelerometer1RMS"), sanitize(" P (bar) ")
    ('volume_flow_raterms', 'accelerometer1rms', 'p_bar')
    """
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def parse_timestamp(text: str) -> float:
    """Unix seconds from an ISO 8601 / SKAB / NAB timestamp (naive = UTC) or a number.

    >>> parse_timestamp("2020-03-09 10:14:33"), parse_timestamp("2020-03-09T11:14:33+01:00")
    (1583748873.0, 1583748873.0)
    >>> parse_timestamp("1583748873.5")
    1583748873.5
    """
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def read_csv(path: str | Path) -> list[CsvRow]:
    """Every data row of a SKAB or NAB file, in file order."""
    with Path(path).open(newline="", encoding="utf-8-sig") as f:
        header_line = f.readline()
        delimiter = ";" if ";" in header_line else ","
        header = next(csv.reader([header_line], delimiter=delimiter))
        time_index, sensors, labels = _columns(header, path)
        reader = csv.reader(f, delimiter=delimiter)
        return [
            _row(cells, time_index, sensors, labels, path, reader.line_num + 1)
            for cells in reader
            if any(cell.strip() for cell in cells)
        ]


def _columns(
    header: list[str], path: str | Path
) -> tuple[int, list[tuple[int, str]], list[tuple[int, str]]]:
    """The time column's index, and (index, name) of the sensor and of the label columns."""
    names = [sanitize(c) for c in header]
    time_index = next((i for i, n in enumerate(names) if n in TIME_COLUMNS), None)
    if time_index is None:
        raise ValueError(f"{path}: no time column (one of {', '.join(TIME_COLUMNS)})")
    others = [(i, n) for i, n in enumerate(names) if i != time_index]
    sensors = [(i, n) for i, n in others if n not in LABEL_COLUMNS]
    labels = [(i, n) for i, n in others if n in LABEL_COLUMNS]
    seen = [n for _, n in others]
    if len(set(seen)) != len(seen) or "" in seen:
        raise ValueError(f"{path}: column names are empty or clash once sanitised: {seen}")
    return time_index, sensors, labels


def _row(
    cells: list[str],
    time_index: int,
    sensors: list[tuple[int, str]],
    labels: list[tuple[int, str]],
    path: str | Path,
    line: int,
) -> CsvRow:
    try:
        ts = parse_timestamp(cells[time_index])
        return CsvRow(ts, _numbers(cells, sensors), _numbers(cells, labels))
    except (ValueError, IndexError) as exc:
        raise ValueError(f"{path}:{line}: {exc}") from None


def _numbers(cells: list[str], columns: list[tuple[int, str]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for i, name in columns:
        text = cells[i].strip() if i < len(cells) else ""
        if text:
            value = float(text)
            if math.isfinite(value):  # NaN / inf cells are gaps, as an empty cell is
                out[name] = value
    return out


def label_truth(rows: Sequence[CsvRow], machine: str) -> list[TruthEvent]:
    """`start` at each row whose `anomaly` label turns 1, `end` at the first row after it
    that is 0 again (or the last row when the file ends anomalous).

    >>> rows = [CsvRow(float(t), {}, {"anomaly": a}) for t, a in enumerate([0, 1, 1, 0])]
    >>> [(e.state, e.ts) for e in label_truth(rows, "m")]
    [('start', 1.0), ('end', 3.0)]
    """
    events: list[TruthEvent] = []
    inside = False
    for row in rows:
        anomalous = row.labels.get(TRUTH_LABEL, 0.0) >= 0.5
        if anomalous != inside:
            state: Literal["start", "end"] = "start" if anomalous else "end"
            events.append(TruthEvent(machine, TRUTH_LABEL, state, row.ts))
            inside = anomalous
    if inside and rows:
        events.append(TruthEvent(machine, TRUTH_LABEL, "end", rows[-1].ts))
    return events


def replay(
    rows: Sequence[CsvRow],
    machine: str,
    sink: Sink,
    *,
    speed: float = 1.0,
    prefix: str = "plant",
    qos: int = 0,
    shift: float = 0.0,
    truth: bool = True,
    stop: threading.Event | None = None,
) -> int:
    """Publishes `rows` as `{prefix}/{machine}` per-machine payloads, each at its own time
    (+ `shift`) paced by `speed` (0: as fast as possible), with the label truth. Returns the
    rows sent (fewer when `stop` is set)."""
    pacer = Pacer(speed, stop)
    topic, truth_topic = f"{prefix}/{machine}", TRUTH_TOPIC.format(machine=machine)
    events = iter(label_truth(rows, machine) if truth else [])
    nxt = next(events, None)
    sent = 0
    for row in rows:
        if not pacer.wait(row.ts):
            break
        while nxt is not None and nxt.ts <= row.ts:
            sink.publish(truth_topic, _truth_payload(nxt, shift), 1)
            nxt = next(events, None)
        if row.values:
            sink.publish(topic, machine_payload(row.ts + shift, row.values), qos)
        sent += 1
    else:  # not stopped: what is left of the truth (none for well-formed labels)
        while nxt is not None:
            sink.publish(truth_topic, _truth_payload(nxt, shift), 1)
            nxt = next(events, None)
    return sent


def _truth_payload(event: TruthEvent, shift: float) -> bytes:
    doc = event.to_dict()
    doc["ts"] = event.ts + shift
    return orjson.dumps(doc)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulators.replay",
        description="Replay SKAB (;-separated, datetime column) or NAB (timestamp,value) CSV "
        "files to MQTT as per-machine payloads on <prefix>/<machine>, with the files' own "
        "timestamps (naive times read as UTC).",
    )
    p.add_argument("csv", nargs="+", type=Path, help="files, replayed one after the other")
    p.add_argument("--machine", help="machine name (default: each file's stem)")
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="times the file's own pace; 0 = as fast as possible (default 1)",
    )
    p.add_argument(
        "--start",
        default=None,
        metavar="EPOCH|now",
        help="shift event time so the first row is at this Unix time (each further "
        "file follows the previous one); default: the file's own timestamps",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--qos", type=int, choices=(0, 1), default=0, help="QoS of the readings")
    p.add_argument("--prefix", default="plant", help="topic prefix (default plant)")
    p.add_argument("--client-id", default="", help="MQTT client id (default: random)")
    p.add_argument("--no-truth", action="store_true", help="do not publish the labels as truth")
    p.add_argument("--stdout", action="store_true", help="print `topic payload` lines instead")
    return p


def _files(args: argparse.Namespace) -> Iterator[tuple[Path, list[CsvRow], float]]:
    """(path, rows, shift) per file; with --start, each file continues 1 s after the last."""
    at = None if args.start is None else (time.time() if args.start == "now" else float(args.start))
    for path in args.csv:
        rows = read_csv(path)
        if not rows:
            log.warning("replay_empty_file", path=str(path))
            continue
        shift = 0.0 if at is None else at - rows[0].ts
        yield path, rows, shift
        if at is not None:
            at = rows[-1].ts + shift + 1.0


def run(argv: Sequence[str] | None = None) -> int:
    """The CLI: `python -m simulators.replay --help`."""
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        sink = open_sink(args)
    except OSError as exc:
        print(f"error: no MQTT broker at {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    with stop_on_signals() as stop:
        try:
            for path, rows, shift in _files(args):
                _replay_file(path, rows, shift, sink, args, stop)
        finally:
            sink.close()
    return 0


def _replay_file(
    path: Path,
    rows: list[CsvRow],
    shift: float,
    sink: Sink,
    args: argparse.Namespace,
    stop: threading.Event,
) -> None:
    machine = args.machine or path.stem
    log.info(
        "replay_file",
        path=str(path),
        machine=machine,
        rows=len(rows),
        first_ts=rows[0].ts + shift,
        speed=args.speed,
    )
    sent = replay(
        rows,
        machine,
        sink,
        speed=args.speed,
        prefix=args.prefix,
        qos=args.qos,
        shift=shift,
        truth=not args.no_truth,
        stop=stop,
    )
    log.info("replay_done", path=str(path), machine=machine, rows=sent)


if __name__ == "__main__":
    raise SystemExit(run())

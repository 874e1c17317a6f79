"""The CSV files `aemon evaluate` and `aemon train` read, as arrays.

Labelled files (`read_labelled`, for evaluation), in three formats told apart by the header:

- SKAB: `;`-separated, `datetime` (`%Y-%m-%d %H:%M:%S`, read as UTC) first, then sensors,
  optionally `anomaly` and `changepoint` (1 marks the row anomalous).
- NAB: `timestamp,value`, labelled by a windows JSON such as NAB's `combined_windows.json`.
- Simple: `,`-separated, `ts` (Unix seconds or RFC 3339) first, then sensors, optionally
  the same label columns (read by `read_history`'s code); without a `changepoint` column
  the first row of each anomalous run is its changepoint. An empty cell is no reading
  (NaN). The Tennessee Eastman files are in this format.

Histories (`read_history`, for training), in two formats told apart by the header: SKAB
and simple, as above.

Rows are kept in the file's order, timestamps as written: a repeated or out-of-order one is
not refused here; the windower that the rows are streamed through rejects it as the
daemon does (`duplicate`, `late`).

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     path = Path(d) / "pump-7.csv"
...     _ = path.write_text("ts,pressure,current\\n0,3.2,1.1\\n1,3.3,\\n2,3.1,1.2\\n")
...     history = read_history(path)
>>> history.sensors, history.ts.tolist(), [round(float(v), 2) for v in history.values[1]]
(('pressure', 'current'), [0.0, 1.0, 2.0], [3.3, nan])
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.core.types import FloatArray

LABEL_COLUMNS = ("anomaly", "changepoint")
TIME_COLUMN = "datetime"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
SIMPLE_TIME_COLUMN = "ts"
TimeArray = npt.NDArray[np.float64]  # Unix seconds: float32 would round them to minutes
BoolArray = npt.NDArray[np.bool_]


class HistoryError(ValueError):
    """A history file cannot be read; the message says why."""


@dataclass(frozen=True)
class SkabFile:
    """A labelled file in memory, whichever format it was read from."""

    name: str
    sensors: tuple[str, ...]
    ts: TimeArray  # the file's naive local time read as UTC
    values: FloatArray  # [rows, sensors]
    anomaly: BoolArray
    changepoint: BoolArray


@dataclass(frozen=True)
class History:
    path: Path
    sensors: tuple[str, ...]
    ts: TimeArray
    values: FloatArray  # [rows, sensors]; NaN where a row has no reading
    anomalous: BoolArray


def read_skab(path: Path) -> SkabFile:
    """A `;`-separated SKAB file; files without label columns (anomaly-free) get all-0 labels."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if r]
    if not header or header[0] != TIME_COLUMN:
        raise ValueError(f"{path}: first column must be {TIME_COLUMN!r}, got {header[:1]}")
    sensors = tuple(h for h in header[1:] if h not in LABEL_COLUMNS)
    index = {h: i for i, h in enumerate(header)}
    ts = np.array([_parse_time(r[0]) for r in body], dtype=np.float64)
    values = np.array([[float(r[index[s]]) for s in sensors] for r in body], dtype=np.float32)

    def labels(col: str) -> BoolArray:
        if col not in index:
            return np.zeros(len(body), dtype=bool)
        return np.array([float(r[index[col]]) > 0.5 for r in body], dtype=bool)

    return SkabFile(str(path), sensors, ts, values, labels("anomaly"), labels("changepoint"))


def _parse_time(text: str) -> float:
    return datetime.strptime(text.strip(), TIME_FORMAT).replace(tzinfo=UTC).timestamp()


# NAB: a file's label windows, keyed by its path under NAB's data/ folder.
NabWindows = dict[str, list[tuple[float, float]]]


def read_nab_windows(path: Path) -> NabWindows:
    """NAB's label format: `{"<dir>/<file>.csv": [["<start>", "<end>"], ...], ...}`."""
    document = json.loads(path.read_text())
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected an object of file -> windows")
    try:
        return {
            str(key): [(parse_iso_time(a), parse_iso_time(b)) for a, b in windows]
            for key, windows in document.items()
        }
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: windows must be [start, end] timestamp pairs ({exc})") from None


def parse_iso_time(text: str) -> float:
    """ISO 8601 times such as NAB's (`2013-12-10 06:25:00.000000`); naive ones are UTC."""
    stamp = datetime.fromisoformat(text.strip())
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


def windows_for(labels: NabWindows, path: Path) -> list[tuple[float, float]]:
    """The windows whose key is a tail of `path` (`realKnownCause/x.csv` matches
    `.../realKnownCause/x.csv`), else the one key with the same file name."""
    posix = path.as_posix()
    by_tail = [k for k in labels if posix == k or posix.endswith("/" + k)]
    by_name = [k for k in labels if Path(k).name == path.name]
    keys = by_tail or by_name
    if len(keys) != 1:
        found = "no" if not keys else f"{len(keys)} ({', '.join(sorted(keys))})"
        raise ValueError(f"{path}: {found} label keys match this file")
    return labels[keys[0]]


def read_nab(path: Path, windows: list[tuple[float, float]]) -> SkabFile:
    """A NAB file (`timestamp,value`): one sensor, `value`; a row is anomalous inside a
    label window, and each window's first row is its changepoint."""
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    header = [h.strip() for h in rows[0]]
    if header != ["timestamp", "value"]:
        raise ValueError(f"{path}: a NAB file has the columns timestamp,value, not {header}")
    ts = np.array([parse_iso_time(r[0]) for r in rows[1:]], dtype=np.float64)
    values = np.array([[float(r[1])] for r in rows[1:]], dtype=np.float32)
    anomaly = np.zeros(len(ts), dtype=bool)
    changepoint = np.zeros(len(ts), dtype=bool)
    for start, end in windows:
        inside = (ts >= start) & (ts <= end)
        anomaly |= inside
        if inside.any():
            changepoint[np.argmax(inside)] = True
    return SkabFile(str(path), ("value",), ts, values, anomaly, changepoint)


def read_labelled(path: Path, labels: NabWindows | None) -> SkabFile:
    """SKAB, NAB or simple, told apart by the header line; NAB files need `labels`."""
    with path.open(newline="") as f:
        first = f.readline()
    head = first.split(",")[0].strip()
    if head == SIMPLE_TIME_COLUMN:
        return _simple_labelled(path)
    if head != "timestamp":
        return read_skab(path)
    if labels is None:
        raise ValueError(f"{path}: a NAB file needs --labels (a windows JSON)")
    return read_nab(path, windows_for(labels, path))


def read_history(path: Path) -> History:
    """One CSV file of either format."""
    with path.open(newline="") as f:
        first = f.readline()
    if first.split(";")[0].strip() == TIME_COLUMN:
        skab = read_skab(path)
        return History(path, skab.sensors, skab.ts, skab.values, skab.anomaly | skab.changepoint)
    if first.split(",")[0].strip() == SIMPLE_TIME_COLUMN:
        simple = _read_simple(path)
        anomalous = np.logical_or.reduce([np.zeros(len(simple.ts), bool), *simple.labels.values()])
        return History(path, simple.sensors, simple.ts, simple.values, anomalous)
    raise HistoryError(
        f"{path}: the header must start with {TIME_COLUMN!r} (SKAB, ';') "
        f"or {SIMPLE_TIME_COLUMN!r} (',')"
    )


@dataclass(frozen=True)
class _Simple:
    sensors: tuple[str, ...]
    ts: TimeArray
    values: FloatArray
    labels: dict[str, BoolArray]  # the label columns present


def _read_simple(path: Path) -> _Simple:
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    header = [h.strip() for h in rows[0]]
    sensors = tuple(h for h in header[1:] if h not in LABEL_COLUMNS)
    index = {h: i for i, h in enumerate(header)}
    body = rows[1:]
    try:
        ts = np.array([_parse_ts(r[0]) for r in body], dtype=np.float64)
        values = np.array([[_cell(r, index[s]) for s in sensors] for r in body], np.float32)
        labels = {
            c: np.array([_cell(r, index[c]) > 0.5 for r in body], dtype=bool)
            for c in LABEL_COLUMNS
            if c in index
        }
    except (ValueError, IndexError) as exc:
        raise HistoryError(f"{path}: {exc}") from exc
    if not np.all(np.isfinite(ts)):
        raise HistoryError(f"{path}: a timestamp is not finite")
    return _Simple(sensors, ts, values.reshape(len(body), len(sensors)), labels)


def _simple_labelled(path: Path) -> SkabFile:
    simple = _read_simple(path)
    no = np.zeros(len(simple.ts), dtype=bool)
    anomaly = simple.labels.get("anomaly", no)
    changepoint = simple.labels.get("changepoint")
    if changepoint is None:
        changepoint = anomaly & ~np.concatenate([[False], anomaly[:-1]])
    return SkabFile(str(path), simple.sensors, simple.ts, simple.values, anomaly, changepoint)


def _parse_ts(text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        return parse_iso_time(text)


def _cell(row: Sequence[str], i: int) -> float:
    text = row[i].strip() if i < len(row) else ""
    return float(text) if text else math.nan

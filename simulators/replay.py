"""Replay SKAB CSV files to MQTT as per-machine payloads, with the files' own timestamps.

SKAB files are `;`-separated with a `datetime` column in naive local time (read as UTC here),
the sensor columns, and the `anomaly` and `changepoint` labels, which are not sent.

    python -m simulators.replay --port 1883 --machine valve1 --speed 0 data/valve1/0.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion

log = structlog.get_logger("simulators.replay")

LABEL_COLUMNS = frozenset({"anomaly", "changepoint"})
TIME_COLUMN = "datetime"


def sanitize(name: str) -> str:
    """A sensor name for topics and payloads: lower case, runs of anything but letters and
    digits become one `_`, no `_` at either end.

    >>> sanitize("Volume Flow RateRMS"), sanitize("Accelerometer1RMS")
    ('volume_flow_raterms', 'accelerometer1rms')
    """
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def parse_time(text: str) -> float:
    """A SKAB `datetime` (naive, taken as UTC) as Unix seconds.

    >>> parse_time("2020-03-09 10:14:33")
    1583748873.0
    """
    return datetime.fromisoformat(text.strip()).replace(tzinfo=UTC).timestamp()


def read_skab(path: str | Path) -> list[tuple[float, dict[str, float]]]:
    """`(ts, {sensor: value})` per data row, in file order. Labels are dropped, sensor names
    sanitised, and empty or non-finite cells left out of the row."""
    rows: list[tuple[float, dict[str, float]]] = []
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter=";")
        header = next(reader)
        columns = [c.strip() for c in header]
        if TIME_COLUMN not in columns:
            raise ValueError(f"{path}: no {TIME_COLUMN!r} column")
        time_index = columns.index(TIME_COLUMN)
        sensors = [
            (i, sanitize(c))
            for i, c in enumerate(columns)
            if i != time_index and c.lower() not in LABEL_COLUMNS
        ]
        for line in reader:
            if not line or not any(cell.strip() for cell in line):
                continue
            values: dict[str, float] = {}
            for i, name in sensors:
                if i < len(line) and line[i].strip():
                    value = float(line[i])
                    if math.isfinite(value):
                        values[name] = value
            rows.append((parse_time(line[time_index]), values))
    return rows


def connect(host: str, port: int, client_id: str) -> paho.Client:
    """A connected paho 2.x client (MQTTv5) with its network loop running."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(host, port)
    client.loop_start()
    if not connected.wait(10):
        client.loop_stop()
        raise SystemExit(f"no MQTT connection to {host}:{port} within 10 s")
    log.info("mqtt_connected", host=host, port=port)
    return client


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.replay",
        description="Replay SKAB CSV files to MQTT as plant/<machine> per-machine payloads.",
    )
    parser.add_argument("csv", nargs="+", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument(
        "--machine",
        help="machine name for every file (default: <folder>-<file stem>, e.g. valve1-0)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="0: as fast as possible (default); X: X times the files' own pace",
    )
    parser.add_argument(
        "--rebase",
        action="store_true",
        help="shift each file's timestamps so its last reading is now",
    )
    parser.add_argument("--topic-prefix", default="plant")
    return parser


def machine_name(path: Path) -> str:
    """The default machine name of a file: `<folder>-<stem>`.

    >>> machine_name(Path("data/valve1/0.csv"))
    'valve1-0'
    """
    return sanitize(f"{path.parent.name}-{path.stem}").replace("_", "-")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = connect(args.host, args.port, "aemon-replay")
    pending: list[paho.MQTTMessageInfo] = []
    try:
        for path in args.csv:
            rows = read_skab(path)
            if not rows:
                continue
            machine = args.machine or machine_name(path)
            shift = time.time() - rows[-1][0] if args.rebase else 0.0
            topic = f"{args.topic_prefix}/{machine}"
            log.info("replay_file", path=str(path), machine=machine, rows=len(rows))
            wall0, first = time.monotonic(), rows[0][0]
            for ts, values in rows:
                if args.speed > 0:
                    delay = wall0 + (ts - first) / args.speed - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                payload = orjson.dumps({"ts": ts + shift, "values": values})
                pending.append(client.publish(topic, payload, qos=1))
                if len(pending) >= 2000:
                    for info in pending[:1000]:
                        info.wait_for_publish(30)
                    del pending[:1000]
        for info in pending:
            info.wait_for_publish(30)
    except KeyboardInterrupt:
        pass
    finally:
        client.loop_stop()
        client.disconnect()
    log.info("replay_finished", files=len(args.csv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Overload through a real Mosquitto: the daemon's memory under floods, and after them.

    python -m benchmarks.overload [--machines 50] [--sensors 8] [--seconds 60]
                                  [--settle 60] [--publishers 3] [--batch-records 450]
                                  [--phases PHASE ...] [--env KEY=VALUE ...]

Everything runs on 127.0.0.1: a Mosquitto of its own, the daemon as a process with the
shipped ingest and pipeline defaults (but for `ingest.max_payload_bytes` 64 KiB), and the
publishers in processes of their own. Every machine learns first (batched history), then
three phases flood it for `--seconds` each, at QoS 1, each publisher waiting for the
broker's PUBACK every 1 MB:

- per-sensor: one reading a message (`plant/<m>/<s>`, `{"ts", "value"}`);
- per-machine: one record of every sensor a message (`plant/<m>`);
- max-size batches: `--batch-records` records a message (56 KB with 8 sensors, under
  the 64 KiB payload limit).

Event time runs ahead one grid step a record, from a year back, so nothing is late or
in the future. Per phase it prints the daemon's RSS before, at its peak (sampled every
0.25 s) and after (once the broker's backlog is drained, `--settle` seconds later; and
the lowest then), the readings accepted and shed (`overloaded`), the largest /metrics
render time (a full scrape every 5 s, as Prometheus would) and the publish rate; a table,
then one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import (
    BENCH_CONFIG,
    LEARN_ROWS,
    SENSOR_NAMES,
    ProcStats,
    box_busy,
    box_share,
    learn,
    publisher,
    value,
)
from service.core.types import RejectReason
from tests.support import Daemon, Mosquitto, metric_value, running

PHASES = ("per-sensor", "per-machine", "max-size batches")
REASONS = tuple(r.value for r in RejectReason)
CONFIG: dict[str, dict[str, Any]] = {
    **BENCH_CONFIG,
    "ingest": {"max_payload_bytes": 65536},  # the rest of ingest and pipeline: defaults
}
# A publisher waits for the broker's PUBACK after this many bytes (back-pressure: its own
# queue stays small).
WAIT_EVERY_BYTES = 1_000_000
# Distinct rows of values a publisher cycles through (building values per record would
# make the publisher, not the daemon, the limit).
TABLE_ROWS = 64


@dataclass(frozen=True)
class Flood:
    kind: str
    machines: range
    sensors: int
    t0: float
    seconds: float
    batch_records: int


def value_table(sensors: int) -> list[dict[str, float]]:
    names = SENSOR_NAMES[:sensors]
    return [
        {name: round(value(0, s, float(r)), 3) for s, name in enumerate(names)}
        for r in range(TABLE_ROWS)
    ]


def round_messages(
    flood: Flood, table: list[dict[str, float]], ts: float
) -> list[tuple[str, bytes]]:
    """One round: every machine's (and sensor's) messages of the round starting at `ts`."""
    row = int(ts) % TABLE_ROWS
    out = []
    for m in flood.machines:
        if flood.kind == "per-sensor":
            for name, v in table[row].items():
                out.append((f"plant/m{m}/{name}", orjson.dumps({"ts": ts, "value": v})))
        elif flood.kind == "per-machine":
            out.append((f"plant/m{m}", orjson.dumps({"ts": ts, "values": table[row]})))
        else:
            records = [
                {"ts": ts + i, "values": table[(row + i) % TABLE_ROWS]}
                for i in range(flood.batch_records)
            ]
            out.append((f"plant/m{m}", orjson.dumps(records)))
    return out


def _flood(port: int, flood: Flood, conn: Connection) -> None:
    """Child process: publishes rounds at QoS 1 until `seconds` pass, waiting for the
    broker's PUBACK every `WAIT_EVERY_BYTES`; reports (messages, readings, seconds, the
    event time reached)."""
    client = publisher(port)
    table = value_table(flood.sensors)
    conn.send("ready")
    conn.recv()
    step = flood.batch_records if flood.kind == "max-size batches" else 1
    started = time.monotonic()
    ts, messages, readings = flood.t0, 0, 0
    unacked = 0
    while time.monotonic() - started < flood.seconds:
        info = None
        for topic, payload in round_messages(flood, table, ts):
            info = client.publish(topic, payload, qos=1)
            messages += 1
            unacked += len(payload)
        if info is not None and unacked >= WAIT_EVERY_BYTES:
            info.wait_for_publish(60)
            unacked = 0
        readings += len(flood.machines) * flood.sensors * step
        ts += step
    conn.send((messages, readings, time.monotonic() - started, ts))
    client.loop_stop()
    client.disconnect()


class PeakRss:
    """The daemon's RSS, sampled every 0.25 s on a thread: the highest since `reset`."""

    def __init__(self, pid: int) -> None:
        self.stats = ProcStats(pid)
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def now(self) -> float:
        return self.stats.memory_mib()["rss_mib"]

    def reset(self) -> float:
        self.peak = self.now()
        return self.peak

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            with contextlib.suppress(OSError, KeyError):
                self.peak = max(self.peak, self.now())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def scrape_seconds(daemon: Daemon) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(daemon.url("/metrics"), timeout=30) as response:
        response.read()
    return time.perf_counter() - started


def counters(daemon: Daemon) -> dict[str, float]:
    names = (
        "aemon_readings_accepted_total",
        "aemon_readings_rejected_total",
        "aemon_messages_received_total",
        "aemon_queue_depth",
    )
    text = daemon.metrics(names)
    out = {name: metric_value(text, name) for name in names}
    for reason in REASONS:
        out[reason] = metric_value(text, "aemon_readings_rejected_total", reason=reason)
    return out


def wait_drained(daemon: Daemon, timeout: float = 300) -> float:
    """Until the broker's backlog is taken in: the messages received stop growing for 2 s
    with the queue empty. Returns the seconds it took."""
    started = time.monotonic()
    last, still_since = -1.0, time.monotonic()
    while time.monotonic() - started < timeout:
        now = counters(daemon)
        if now["aemon_messages_received_total"] != last or now["aemon_queue_depth"] > 0:
            last, still_since = now["aemon_messages_received_total"], time.monotonic()
        elif time.monotonic() - still_since >= 2.0:
            break
        time.sleep(0.5)
    return time.monotonic() - started - 2.0


def phase(
    daemon: Daemon, port: int, kind: str, args: argparse.Namespace, t0: float, rss: PeakRss
) -> tuple[dict[str, Any], float]:
    before = counters(daemon)
    rss_before = rss.reset()
    share = -(-args.machines // args.publishers)
    flood_args = (args.sensors, t0, args.seconds, args.batch_records)
    floods = [
        Flood(kind, range(k, min(args.machines, k + share)), *flood_args)
        for k in range(0, args.machines, share)
    ]
    procs = []
    for flood in floods:
        parent, child = mp.Pipe()
        proc = mp.Process(target=_flood, args=(port, flood, child))
        proc.start()
        if not parent.poll(30):
            raise RuntimeError("publisher did not connect")
        parent.recv()
        procs.append((proc, parent))
    for _, parent in procs:
        parent.send("go")
    renders, next_scrape = [], time.monotonic() + 5
    while not all(parent.poll() for _, parent in procs):
        if time.monotonic() >= next_scrape:
            renders.append(scrape_seconds(daemon))
            next_scrape = time.monotonic() + 5
        time.sleep(0.25)
    results = [parent.recv() for _, parent in procs]
    for proc, _ in procs:
        proc.join(10)
    drain = wait_drained(daemon)
    peak = rss.peak
    settled = []
    end = time.monotonic() + args.settle
    while time.monotonic() < end:
        settled.append(rss.now())
        time.sleep(0.5)
    after = counters(daemon)
    messages = sum(r[0] for r in results)
    seconds = max(r[2] for r in results)
    shed = after["overloaded"] - before["overloaded"]
    rejected = after["aemon_readings_rejected_total"] - before["aemon_readings_rejected_total"]
    return {
        "phase": kind,
        "messages": messages,
        "readings_published": sum(r[1] for r in results),
        "publish_messages_per_s": messages / seconds,
        "accepted": after["aemon_readings_accepted_total"]
        - before["aemon_readings_accepted_total"],
        "shed": shed,
        "rejected_other": rejected - shed,
        "rejected_by_reason": {
            r: after[r] - before[r] for r in REASONS if after[r] - before[r] and r != "overloaded"
        },
        "drain_seconds": drain,
        "rss_before_mib": rss_before,
        "rss_peak_mib": peak,
        "rss_after_mib": settled[-1] if settled else rss.now(),
        "rss_lowest_after_mib": min(settled, default=float("nan")),
        "render_max_s": max(renders, default=float("nan")),
        "render_after_s": scrape_seconds(daemon),
    }, max(r[3] for r in results)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    busy0 = box_busy()
    broker = Mosquitto(workdir).start()
    daemon_dir = workdir / "daemon"
    daemon_dir.mkdir()
    daemon = Daemon(daemon_dir, broker.port, CONFIG)
    with running(broker):
        daemon.start(env=dict(e.split("=", 1) for e in args.env))
        with running(daemon):
            t0 = time.time() - 365 * 86400
            learn_seconds = learn(daemon, broker.port, args.machines, args.sensors, t0)
            rss = PeakRss(daemon.pid)
            rss_learnt = rss.now()
            t = t0 + LEARN_ROWS + 10
            phases = []
            try:
                for kind in args.phases:
                    result, t = phase(daemon, broker.port, kind, args, t + 10, rss)
                    phases.append(result)
                    print(json.dumps(result), flush=True)
            finally:
                rss.stop()
    return {
        "machines": args.machines,
        "sensors": args.sensors,
        "seconds": args.seconds,
        "settle": args.settle,
        "publishers": args.publishers,
        "env": args.env,
        "batch_records": args.batch_records,
        "learn_seconds": learn_seconds,
        "rss_after_learning_mib": rss_learnt,
        "phases": phases,
        "box_cpu_busy": box_share(busy0),
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"{result['machines']} machines x {result['sensors']} sensors, "
        f"{result['publishers']} publishers, {result['seconds']} s a phase, RSS after "
        f"{result['settle']} s; learning took {result['learn_seconds']:.0f} s, RSS then "
        f"{result['rss_after_learning_mib']:.0f} MiB"
    )
    head = f"{'phase':<18}{'msgs/s':>8}{'accepted':>11}{'shed':>11}{'other rej':>10}"
    print(head + f"{'RSS before':>11}{'peak':>7}{'after':>7}{'lowest':>7}{'/metrics s':>11}")
    for p in result["phases"]:
        print(
            f"{p['phase']:<18}{p['publish_messages_per_s']:>8.0f}{p['accepted']:>11.0f}"
            f"{p['shed']:>11.0f}{p['rejected_other']:>10.0f}{p['rss_before_mib']:>11.0f}"
            f"{p['rss_peak_mib']:>7.0f}{p['rss_after_mib']:>7.0f}"
            f"{p['rss_lowest_after_mib']:>7.0f}{p['render_max_s']:>11.3f}"
        )
    print(f"box CPU busy {result['box_cpu_busy']:.0%} (this benchmark included); RSS in MiB")
    for p in result["phases"]:
        if p["rejected_by_reason"]:
            print(f"{p['phase']}: rejected other than overloaded: {p['rejected_by_reason']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=50)
    parser.add_argument("--sensors", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0, help="flood of each phase")
    parser.add_argument("--settle", type=float, default=60.0, help="after each, seconds")
    parser.add_argument("--publishers", type=int, default=3)
    parser.add_argument(
        "--phases", nargs="+", choices=PHASES, default=list(PHASES), help="default: all three"
    )
    parser.add_argument("--batch-records", type=int, default=450)
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for the daemon (MALLOC_ARENA_MAX=2)"
    )
    args = parser.parse_args()
    flood = Flood(PHASES[2], range(1), args.sensors, 1.8e9, 0, args.batch_records)
    largest = len(round_messages(flood, value_table(args.sensors), 1.8e9)[0][1])
    if largest > CONFIG["ingest"]["max_payload_bytes"]:
        parser.error(f"--batch-records {args.batch_records} makes {largest}-byte messages")
    with tempfile.TemporaryDirectory(prefix="aemon-overload-") as tmp:
        result = run(args, Path(tmp))
    print_table(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

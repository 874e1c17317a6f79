"""What the benchmarks share: the daemon's bench config, load generators (their own
processes), learning, /proc and /metrics readings.

Everything runs on 127.0.0.1: a Mosquitto of the benchmark's own (free port, nothing
dropped), the daemon as a process (`python -m service run`), and load generators as
processes, so that the daemon's figures are not the generator's.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from tests.support import FAST_CONFIG, Daemon, metric_value, wait_until

SENSOR_NAMES = tuple(f"s{i}" for i in range(32))
# The tests' fast learning through the production code paths (windows and alert rule as
# theirs), with fewer windows and epochs so that hundreds of machines fit within the time
# box, and room for bursts.
BENCH_CONFIG: dict[str, dict[str, Any]] = {
    **FAST_CONFIG,
    "learning": {"windows": 60},
    "discovery": {"period": 3.0},
    "model": {"epochs": 10},
    "ingest": {"max_payload_bytes": 65536, "queue_size": 100_000},
    "log": {"level": "warning"},
    # 1,000 first fits can take longer than the default 300 s on a shared box: the machines
    # fitted first would be shown `stale` (no reading since their history) and never
    # `scoring`, which the benchmarks wait for before the live run.
    "alert": {**FAST_CONFIG["alert"], "stale_after": 1800.0},
}


def bench_config(kind: str | None) -> dict[str, dict[str, Any]]:
    """BENCH_CONFIG with another model family than the default (`--model`)."""
    if kind is None:
        return BENCH_CONFIG
    return {**BENCH_CONFIG, "model": {**BENCH_CONFIG["model"], "kind": kind}}


# Discovery + first window + learning windows + the 2 s lateness and one row: the last
# learning window passes the watermark, and at most two more windows are scored before the
# live ones (more would make a machine's first fine-tune due at once, not `--finetune-after`
# seconds into the live run: the learning windows alone are taken to learn from).
LEARN_ROWS = 3 + 20 + 60 + 3


Message = tuple[str, bytes]


def value(machine: int, sensor: int, t: float, fault: float = 1.0) -> float:
    """A smooth signal per machine and sensor, with a little noise; `fault` scales it."""
    base = 10.0 + machine % 7 + sensor
    noise = 0.1 * (math.sin(t * 12.9898 + machine * 78.233 + sensor * 37.719) * 43758.5453 % 1)
    return fault * base * (1.0 + 0.1 * math.sin(t / 5.0 + sensor)) + noise


def batch_messages(
    machines: int, sensors: int, t0: float, rows: int, per_message: int
) -> Iterator[Message]:
    for start in range(0, rows, per_message):
        for m in range(machines):
            records = [
                {
                    "ts": t0 + r,
                    "values": {SENSOR_NAMES[s]: value(m, s, t0 + r) for s in range(sensors)},
                }
                for r in range(start, min(rows, start + per_message))
            ]
            yield f"plant/m{m}", orjson.dumps(records)


def publisher(port: int) -> paho.Client:
    """A QoS 1 publisher, connected and looping."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    # paho walks its in-flight table on every PUBACK: a window of thousands costs 10x.
    client.max_inflight_messages_set(50)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def _publish_all(port: int, messages: list[Message], conn: Connection) -> None:
    """Child process: connects, says ready, waits for go, publishes at QoS 1 as fast as
    paho allows, waits for every PUBACK, reports (start, end) wall-clock times."""
    client = publisher(port)
    conn.send("ready")
    conn.recv()
    started = time.time()
    info = None
    for topic, payload in messages:
        info = client.publish(topic, payload, qos=1)
    if info is not None:
        info.wait_for_publish(120)
    conn.send((started, time.time()))
    client.loop_stop()
    client.disconnect()


@dataclass
class Load:
    """A burst published by a child process; the messages are built before the clock starts."""

    port: int
    messages: list[Message]

    def __post_init__(self) -> None:
        self.conn, child = mp.Pipe()
        self.proc = mp.Process(target=_publish_all, args=(self.port, self.messages, child))
        self.proc.start()
        if not self.conn.poll(30):
            raise RuntimeError("load generator did not connect")
        self.conn.recv()

    def go(self) -> float:
        started = time.time()
        self.conn.send("go")
        return started

    def finish(self, timeout: float = 150) -> tuple[float, float]:
        if not self.conn.poll(timeout):
            self.proc.kill()
            raise RuntimeError("load generator did not finish")
        times: tuple[float, float] = self.conn.recv()
        self.proc.join(10)
        return times


def all_scoring(daemon: Daemon, machines: int) -> bool:
    states = [m["state"] for m in daemon.machines().values()]
    return len(states) >= machines and all(s == "scoring" for s in states)


def learn(daemon: Daemon, port: int, machines: int, sensors: int, t0: float) -> float:
    """Normal history for every machine (batched, fast), then waits for every model."""
    started = time.monotonic()
    load = Load(port, list(batch_messages(machines, sensors, t0, LEARN_ROWS, 10)))
    load.go()
    load.finish()
    # Minutes, not seconds, on a box shared with other work: 1,000 first fits queue up (more
    # than 10 minutes with two other sessions' tests running).
    wait_until(lambda: all_scoring(daemon, machines), 1800, "every machine scoring", 1.0)
    return time.monotonic() - started


def box_busy() -> tuple[float, float]:
    """(busy, total) CPU jiffies of the whole box, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def box_share(before: tuple[float, float]) -> float:
    """Share of the box's CPU busy since `before` (others' processes included: a shared box
    makes the figures lower than a quiet one would)."""
    busy, total = box_busy()
    return (busy - before[0]) / max(1.0, total - before[1])


def box_niced() -> tuple[float, float]:
    """(niced, total) CPU jiffies of the whole box: background work run under `nice`
    (another session's test runs, say) shows here, the benchmark's own processes do not."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[1], sum(fields)


def niced_share(before: tuple[float, float]) -> float:
    """Share of the box's CPU spent in niced processes since `before`."""
    niced, total = box_niced()
    return (niced - before[0]) / max(1.0, total - before[1])


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def histogram(text: str, name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) buckets of a histogram in /metrics text."""
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return sorted(buckets.items())


def longest_between(before: str, after: str, name: str) -> float:
    """The upper bound of the highest bucket that grew between two scrapes: the longest
    observation is at most this (0 when none grew)."""
    start = dict(histogram(before, name))
    grown = 0.0
    previous = 0.0
    for le, count in histogram(after, name):
        increase = count - start.get(le, 0.0)
        if increase > previous:
            grown = le
        previous = increase
    return grown


def histogram_quantile(
    q: float, before: list[tuple[float, float]], after: list[tuple[float, float]]
) -> float:
    """Prometheus' histogram_quantile over the increase between two scrapes."""
    start = dict(before)
    buckets = [(le, count - start.get(le, 0.0)) for le, count in after]
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = le, count
    return lower


class ProcStats:
    """CPU seconds and memory of a process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ticks = float(os.sysconf("SC_CLK_TCK"))

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / self.ticks  # utime, stime

    def memory_mib(self) -> dict[str, float]:
        status = Path(f"/proc/{self.pid}/status").read_text().splitlines()
        kib = {k: v.split() for k, _, v in (line.partition(":") for line in status)}
        return {"rss_mib": int(kib["VmRSS"][0]) / 1024, "hwm_mib": int(kib["VmHWM"][0]) / 1024}


# -- rows in real time ---------------------------------------------------------------------
FAULT_SENSOR = 0
FAULT_FACTOR = 3.0


@dataclass
class PacedSpec:
    """One row per machine each wall-clock second (`plant/<m>`, ts = that second), for
    `seconds`. Spread (the default) sends machine m at m/machines into its second, as
    unsynchronised machines do; `burst` sends every machine at the top of the second, as
    one gateway for the whole plant would. From `faults[m]` (seconds after the start) on,
    machine m's first sensor reads x3."""

    machines: int
    sensors: int
    seconds: int
    faults: dict[int, int] = field(default_factory=dict)
    burst: bool = False


def _paced(port: int, spec: PacedSpec, conn: Connection) -> None:
    """Child process: sends its start second first; at the end, the publish time of every
    row of a faulty machine."""
    client = publisher(port)
    start = math.ceil(time.time()) + 1
    conn.send(start)
    published: dict[tuple[int, float], float] = {}
    for i in range(spec.seconds):
        ts = float(start + i)
        for m in range(spec.machines):
            at = ts if spec.burst else ts + m / spec.machines
            time.sleep(max(0.0, at - time.time()))
            onset = spec.faults.get(m)
            factor = FAULT_FACTOR if onset is not None and i >= onset else 1.0
            values = {
                SENSOR_NAMES[s]: value(m, s, ts, factor if s == FAULT_SENSOR else 1.0)
                for s in range(spec.sensors)
            }
            client.publish(f"plant/m{m}", orjson.dumps({"ts": ts, "values": values}), qos=1)
            if onset is not None:
                published[(m, ts)] = time.time()
    conn.send(published)
    client.loop_stop()
    client.disconnect()


class Paced:
    """The real-time load generator as a process: `start` is its first row's second."""

    def __init__(self, port: int, spec: PacedSpec) -> None:
        self.conn, child = mp.Pipe()
        self.proc = mp.Process(target=_paced, args=(port, spec, child))
        self.proc.start()
        if not self.conn.poll(30):
            raise RuntimeError("load generator did not connect")
        self.start: int = self.conn.recv()

    def done(self, timeout: float) -> bool:
        """Waits up to `timeout` for the end; raises if the generator died."""
        if self.conn.poll(timeout):
            return True
        if not self.proc.is_alive():
            raise RuntimeError("load generator died")
        return False

    def published(self) -> dict[tuple[int, float], float]:
        result: dict[tuple[int, float], float] = self.conn.recv()
        self.proc.join(10)
        return result

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)


def sleep_until(when: float) -> None:
    time.sleep(max(0.0, when - time.time()))


def counter_delta(before: str, after: str, name: str, **labels: str) -> float:
    return metric_value(after, name, **labels) - metric_value(before, name, **labels)


def quantile_between(before: str, after: str, name: str, q: float = 0.99) -> float:
    """`histogram_quantile(q, increase(name[...]))` between two /metrics texts."""
    return histogram_quantile(q, histogram(before, name), histogram(after, name))

"""Alert latency, scoring latency, CPU and memory at 1 Hz in real time.

    python -m benchmarks.latency [--machines 1000] [--sensors 8] [--seconds 60] [--faults 50]

Mosquitto, the daemon and the load generator run as processes of their own on 127.0.0.1.
After a fast learning phase (batched history), every machine sends one row a second of
wall-clock time (`plant/<m>`, `{"ts", "values"}`); `--faults` machines get a fault (one
sensor x3) at staggered times. For every alert raised, the latency runs from the publish of
the reading that completed its window (the first row at `updated_at + lateness`) to the
alert's arrival on `aemon/events`. Scoring latency comes from the daemon's histogram; CPU
and RSS from /proc/<pid>.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import tempfile
import threading
import time
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.throughput import (
    BENCH_CONFIG,
    SENSOR_NAMES,
    all_scoring,
    box_busy,
    box_share,
    learn,
    loadavg,
    value,
)
from tests.support import Daemon, Mosquitto, metric_value, running, wait_until

LATENESS = float(BENCH_CONFIG["window"]["lateness"])
WARMUP = int(BENCH_CONFIG["window"]["length"]) + 5  # a gap restarts windows: refill first
FAULT_SENSOR = 0
FAULT_FACTOR = 3.0


# -- load generator (its own process) ------------------------------------------------------
def _paced(port: int, args: dict[str, Any], conn: Connection) -> None:
    """One row per machine each wall-clock second, ts = that second; reports the publish
    time of every row of a faulty machine."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(50)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    machines, sensors, seconds = args["machines"], args["sensors"], args["seconds"]
    faults: dict[int, float] = args["faults"]
    start = math.ceil(time.time()) + 1
    published: dict[tuple[int, float], float] = {}
    for i in range(seconds):
        ts = float(start + i)
        time.sleep(max(0.0, ts - time.time()))
        for m in range(machines):
            onset = faults.get(m)
            factor = FAULT_FACTOR if onset is not None and i >= onset else 1.0
            values = {
                SENSOR_NAMES[s]: value(m, s, ts, factor if s == FAULT_SENSOR else 1.0)
                for s in range(sensors)
            }
            client.publish(f"plant/m{m}", orjson.dumps({"ts": ts, "values": values}), qos=1)
            if onset is not None:
                published[(m, ts)] = time.time()
    conn.send((start, published))
    client.loop_stop()
    client.disconnect()


# -- the alert subscriber ------------------------------------------------------------------
class Alerts:
    """Every `raised` event on `aemon/events`, with its arrival time."""

    def __init__(self, port: int) -> None:
        self.raised: list[tuple[float, dict[str, Any]]] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe("aemon/events", qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("alert subscriber not subscribed")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        arrived = time.time()
        event = orjson.loads(msg.payload)
        if event.get("event") == "raised":
            with self.lock:
                self.raised.append((arrived, event))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# -- figures -------------------------------------------------------------------------------
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


def alert_latencies(
    raised: list[tuple[float, dict[str, Any]]], published: dict[tuple[int, float], float]
) -> tuple[list[float], int]:
    """Latency of each alert from the publish of the row that completed its window."""
    latencies: list[float] = []
    unmatched = 0
    for arrived, event in raised:
        machine = int(event["machine"].removeprefix("m"))
        window_end = datetime.fromisoformat(event["updated_at"]).timestamp()
        trigger = math.ceil(window_end + LATENESS)
        sent = published.get((machine, float(trigger)))
        if sent is None:
            unmatched += 1
        else:
            latencies.append(arrived - sent)
    return latencies, unmatched


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    m, s = args.machines, args.sensors
    n_faults = max(1, min(args.faults, m))
    span = max(1, args.seconds - WARMUP - 15)  # onsets spread, each with 15 s to raise
    faults = {k * (m // n_faults): WARMUP + k * span // n_faults for k in range(n_faults)}
    broker = Mosquitto(workdir).start()
    daemon_dir = workdir / "daemon"
    daemon_dir.mkdir()
    daemon = Daemon(daemon_dir, broker.port, BENCH_CONFIG)
    with running(broker):
        daemon.start()
        alerts = Alerts(broker.port)
        with running(daemon, alerts):
            t0 = time.time() - 600
            learn_seconds = learn(daemon, broker.port, m, s, t0)
            assert all_scoring(daemon, m)
            proc = ProcStats(daemon.pid)
            before_text, cpu0, wall0 = daemon.metrics(), proc.cpu_seconds(), time.time()
            busy0, load0 = box_busy(), loadavg()
            conn, child = mp.Pipe()
            spec = {"machines": m, "sensors": s, "seconds": args.seconds, "faults": faults}
            gen = mp.Process(target=_paced, args=(broker.port, spec, child))
            gen.start()
            rss_peak = 0.0
            while not conn.poll(1.0):
                rss_peak = max(rss_peak, proc.memory_mib()["rss_mib"])
                if not gen.is_alive():
                    raise RuntimeError("load generator died")
            _start, published = conn.recv()
            gen.join(10)
            expected = m * s * args.seconds
            wait_until(
                lambda: (
                    metric_value(daemon.metrics(), "aemon_readings_received_total")
                    - metric_value(before_text, "aemon_readings_received_total")
                    >= expected
                ),
                60,
                "every reading taken in",
                0.5,
            )
            time.sleep(LATENESS + 3)  # the last alerts: a window waits for the watermark
            after_text, cpu1, wall1 = daemon.metrics(), proc.cpu_seconds(), time.time()
            box = {"box_cpu_busy": box_share(busy0), "loadavg_1m": [load0, loadavg()]}
            memory = proc.memory_mib()
            with alerts.lock:
                raised = list(alerts.raised)
    latencies, unmatched = alert_latencies(
        [(t, e) for t, e in raised if int(e["machine"].removeprefix("m")) in faults], published
    )
    name = "aemon_scoring_latency_seconds"
    delta = {
        k: metric_value(after_text, k) - metric_value(before_text, k)
        for k in (
            "aemon_readings_accepted_total",
            "aemon_readings_rejected_total",
            "aemon_windows_scored_total",
        )
    }
    return {
        "machines": m,
        "sensors": s,
        "seconds": args.seconds,
        "learn_seconds": learn_seconds,
        "faulty_machines": len(faults),
        "alerts_raised": len(raised),
        "alerts_on_healthy_machines": sum(
            int(e["machine"].removeprefix("m")) not in faults for _, e in raised
        ),
        "alerts_unmatched": unmatched,
        "alert_latency_p50": percentile(latencies, 0.5),
        "alert_latency_p99": percentile(latencies, 0.99),
        "alert_latency_max": max(latencies, default=float("nan")),
        "scoring_latency_p99": histogram_quantile(
            0.99, histogram(before_text, name), histogram(after_text, name)
        ),
        "readings_per_s": expected / args.seconds,
        "accepted": delta["aemon_readings_accepted_total"],
        "rejected": delta["aemon_readings_rejected_total"],
        "windows_scored": delta["aemon_windows_scored_total"],
        "cpu_cores": (cpu1 - cpu0) / (wall1 - wall0),
        "rss_mib": memory["rss_mib"],
        "rss_peak_mib": max(rss_peak, memory["rss_mib"]),
        "rss_hwm_mib": memory["hwm_mib"],
        **box,
    }


def print_table(r: dict[str, Any]) -> None:
    print(
        f"{r['machines']} machines x {r['sensors']} sensors at 1 Hz for {r['seconds']} s "
        f"({r['readings_per_s']:.0f} readings/s), learning took {r['learn_seconds']:.0f} s"
    )
    rows = [
        ("alerts raised / faulty machines", f"{r['alerts_raised']} / {r['faulty_machines']}"),
        ("alerts on healthy machines", f"{r['alerts_on_healthy_machines']}"),
        ("alert latency p50", f"{r['alert_latency_p50'] * 1e3:.0f} ms"),
        ("alert latency p99", f"{r['alert_latency_p99'] * 1e3:.0f} ms"),
        ("alert latency max", f"{r['alert_latency_max'] * 1e3:.0f} ms"),
        ("scoring latency p99 (histogram)", f"{r['scoring_latency_p99'] * 1e3:.2f} ms"),
        ("readings accepted / rejected", f"{r['accepted']:.0f} / {r['rejected']:.0f}"),
        ("windows scored", f"{r['windows_scored']:.0f}"),
        ("daemon CPU", f"{r['cpu_cores']:.2f} cores ({r['cpu_cores'] / 2:.0%} of 2)"),
        ("daemon RSS end / peak", f"{r['rss_mib']:.0f} / {r['rss_peak_mib']:.0f} MiB"),
        ("box CPU busy (all processes)", f"{r['box_cpu_busy']:.0%}"),
        ("load average 1 min (start, end)", f"{r['loadavg_1m']}"),
    ]
    for label, text in rows:
        print(f"{label:<34}{text:>20}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--sensors", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=60, help="real-time phase, wall seconds")
    parser.add_argument("--faults", type=int, default=50, help="machines that get a fault")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aemon-latency-") as tmp:
        result = run(args, Path(tmp))
    print_table(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

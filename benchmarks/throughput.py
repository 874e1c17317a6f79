"""Throughput through a real Mosquitto: the raw ceiling, then the daemon, in one run.

    python -m benchmarks.throughput [--machines 200] [--sensors 8] [--rows 40] [--batch-rows 150]

Everything runs on 127.0.0.1: a Mosquitto of its own (free port, nothing dropped), the
daemon as a process (`python -m service run`), and the load generator in another process.

(a) ceiling: a paho subscriber that only counts receives a burst of per-sensor messages;
(b) the daemon, all machines already past learning: per-sensor messages `plant/<m>/<s>`
    (`{"ts", "value"}`), then per-machine batches `plant/<m>` (a list of records). The
    rate is readings accepted (from /metrics) over the time from the first publish to the
    last reading accepted; windows scored are read the same way.

Prints a table and one JSON line. Each phase has a deadline, so a run stays bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.common import (
    BENCH_CONFIG,
    LEARN_ROWS,
    SENSOR_NAMES,
    Load,
    Message,
    batch_messages,
    box_busy,
    box_share,
    learn,
    loadavg,
    value,
)
from tests.support import Daemon, Mosquitto, metric_value, running


# -- load generator (its own process) ------------------------------------------------------
def per_sensor_messages(
    prefix: str, machines: int, sensors: int, t0: float, rows: int
) -> Iterator[Message]:
    for r in range(rows):
        ts = t0 + r
        for m in range(machines):
            for s in range(sensors):
                payload = orjson.dumps({"ts": ts, "value": value(m, s, ts)})
                yield f"{prefix}/m{m}/{SENSOR_NAMES[s]}", payload


# -- the raw ceiling -----------------------------------------------------------------------
class Counter:
    """A paho subscriber that only counts (and notes when the last message came)."""

    def __init__(self, port: int, topic: str, expected: int) -> None:
        self.count = 0
        self.expected = expected
        self.last = 0.0
        self.done = threading.Event()
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("counter not subscribed")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.last = time.time()
            self.done.set()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def ceiling(port: int, messages: int, machines: int, sensors: int) -> dict[str, float]:
    rows = max(1, messages // (machines * sensors))
    burst = list(per_sensor_messages("ceiling", machines, sensors, time.time(), rows))
    counter = Counter(port, "ceiling/#", len(burst))
    load = Load(port, burst)
    try:
        started = load.go()
        counter.done.wait(150)
        pub_start, pub_end = load.finish()
    finally:
        counter.close()
    seconds = (counter.last or time.time()) - started
    return {
        "messages": len(burst),
        "received": counter.count,
        "seconds": seconds,
        "rate": counter.count / seconds,
        "publish_rate": len(burst) / (pub_end - pub_start),
    }


# -- the daemon ----------------------------------------------------------------------------
@dataclass
class Counters:
    accepted: float
    rejected: float
    scored: float

    @classmethod
    def read(cls, daemon: Daemon) -> Counters:
        text = daemon.metrics()
        return cls(
            metric_value(text, "aemon_readings_accepted_total"),
            metric_value(text, "aemon_readings_rejected_total"),
            metric_value(text, "aemon_windows_scored_total"),
        )


def daemon_phase(
    daemon: Daemon, port: int, messages: list[Message], readings: int, windows: int
) -> dict[str, float]:
    """Publishes `messages`; times the daemon until it has taken in all `readings` and
    scored the `windows` they complete."""
    before = Counters.read(daemon)
    load = Load(port, messages)
    started = load.go()
    pub_start, pub_end = load.finish()
    deadline = time.monotonic() + 120
    accepted_at: float | None = None
    while True:
        now = Counters.read(daemon)
        taken = now.accepted - before.accepted + now.rejected - before.rejected
        if accepted_at is None and taken >= readings:
            accepted_at = time.time()
        if (taken >= readings and now.scored - before.scored >= windows) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.25)  # a scrape costs the daemon CPU: not too often
    done_at = time.time()
    accepted = now.accepted - before.accepted
    seconds = done_at - started
    return {
        "messages": len(messages),
        "readings": readings,
        "accepted": accepted,
        "rejected": now.rejected - before.rejected,
        "scored": now.scored - before.scored,
        "seconds": seconds,
        "accept_seconds": (accepted_at or done_at) - started,
        "rate": accepted / seconds,
        "messages_per_s": len(messages) / seconds,
        "publish_rate": len(messages) / (pub_end - pub_start),
    }


@contextlib.contextmanager
def profiled(pid: int, out: Path | None) -> Iterator[None]:
    """py-spy (if asked for and installed) records the daemon's stacks meanwhile."""
    if out is None:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [spy, "record", "-p", str(pid), "-o", str(out), "--format", "raw", "-r", "50"]
    proc = subprocess.Popen([*command, "--nonblocking"], stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def top_frames(collapsed: Path, n: int = 15) -> list[tuple[str, float, float]]:
    """(frame, self share, inclusive share) of the busiest frames of a py-spy raw profile."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        k = int(count)
        total += k
        own[frames[-1]] = own.get(frames[-1], 0) + k
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + k
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:n]
    return [(f, k / total, inclusive[f] / total) for f, k in ranked]


def batch_profile(profile: Path | None) -> Path | None:
    return None if profile is None else profile.with_suffix(".batch" + profile.suffix)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    m, s = args.machines, args.sensors
    busy0, load0 = box_busy(), loadavg()
    broker = Mosquitto(workdir).start()
    daemon_dir = workdir / "daemon"
    daemon_dir.mkdir()
    daemon = Daemon(daemon_dir, broker.port, BENCH_CONFIG)
    with running(broker):
        ceil = ceiling(broker.port, m * s * args.rows, m, s)
        daemon.start()
        with running(daemon):
            t0 = time.time() - (LEARN_ROWS + args.rows + args.batch_rows + 120)
            learn_seconds = learn(daemon, broker.port, m, s, t0)
            t1 = t0 + LEARN_ROWS
            sensor_msgs = list(per_sensor_messages("plant", m, s, t1, args.rows))
            with profiled(daemon.pid, args.profile):
                per_sensor = daemon_phase(
                    daemon, broker.port, sensor_msgs, len(sensor_msgs), m * args.rows
                )
            t2 = t1 + args.rows
            batches = list(batch_messages(m, s, t2, args.batch_rows, args.batch_size))
            with profiled(daemon.pid, batch_profile(args.profile)):
                batch = daemon_phase(
                    daemon, broker.port, batches, m * s * args.batch_rows, m * args.batch_rows
                )
    return {
        "machines": m,
        "sensors": s,
        "learn_seconds": learn_seconds,
        "ceiling": ceil,
        "per_sensor": per_sensor,
        "batch": batch,
        "ratio_per_sensor": per_sensor["rate"] / ceil["rate"],
        "ratio_batch": batch["rate"] / ceil["rate"],
        "box_cpu_busy": box_share(busy0),
        "loadavg_1m": [load0, loadavg()],
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"{result['machines']} machines x {result['sensors']} sensors, "
        f"learning took {result['learn_seconds']:.0f} s"
    )
    header = f"{'phase':<28}{'messages':>10}{'readings/s':>12}{'msgs/s':>10}{'pub msgs/s':>12}"
    print(header + f"{'rejected':>10}{'scored':>9}")
    c = result["ceiling"]
    print(
        f"{'ceiling (count only)':<28}{c['messages']:>10}{c['rate']:>12.0f}{c['rate']:>10.0f}"
        f"{c['publish_rate']:>12.0f}{'-':>10}{'-':>9}"
    )
    for key, label in (
        ("per_sensor", "daemon, per-sensor"),
        ("batch", "daemon, per-machine batch"),
    ):
        p = result[key]
        print(
            f"{label:<28}{p['messages']:>10}{p['rate']:>12.0f}{p['messages_per_s']:>10.0f}"
            f"{p['publish_rate']:>12.0f}{p['rejected']:>10.0f}{p['scored']:>9.0f}"
        )
    print(
        f"box CPU busy {result['box_cpu_busy']:.0%}, load average {result['loadavg_1m']} "
        "(start, end; other processes on the box lower every figure)"
    )
    print(
        f"daemon/ceiling: per-sensor {result['ratio_per_sensor']:.2f}, "
        f"batch {result['ratio_batch']:.2f} (readings/s over ceiling messages/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument("--sensors", type=int, default=8)
    parser.add_argument("--rows", type=int, default=40, help="per-sensor phase: seconds of data")
    parser.add_argument("--batch-rows", type=int, default=150, help="batch phase: seconds")
    parser.add_argument("--batch-size", type=int, default=10, help="records per batch message")
    parser.add_argument("--profile", type=Path, help="py-spy raw profile of the per-sensor phase")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aemon-bench-") as tmp:
        result = run(args, Path(tmp))
    print_table(result)
    print(json.dumps(result))
    for phase, path in (("per-sensor", args.profile), ("batch", batch_profile(args.profile))):
        if path is not None and path.exists():
            print(f"py-spy, {phase} phase: self, inclusive, frame")
            for frame, own, inclusive in top_frames(path):
                print(f"{own:6.1%} {inclusive:6.1%}  {frame}")


if __name__ == "__main__":
    main()

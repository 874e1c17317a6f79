"""Throughput through a real Mosquitto: the raw ceiling, then the daemon, in one run.

    python -m benchmarks.throughput [--machines 200] [--sensors 8] [--rows 40]
                                    [--batch-rows 600] [--profile spy.txt]

Everything runs on 127.0.0.1: a Mosquitto of its own (free port, nothing dropped), the
daemon as a process (`python -m service run`), and the load generator in another process.

Every phase is *preloaded*, so that the publisher is no limit: the subscriber holds a
persistent MQTT 5 session with QoS 1 subscriptions and is stopped (SIGSTOP, by PID) while
the whole burst is published and acknowledged by the broker, which queues it; the clock
starts when the subscriber is resumed (SIGCONT) and it drains the queue.

(a) ceiling: a paho subscriber (its own process, MQTT 5, QoS 1, acknowledging each message)
    that only counts; its rate is messages over the time from resume to the last message.
    The same with aemon's client (`service.transport.mqtt`, which reads with fewer system calls and
    decodes a plain PUBLISH itself) shows what the daemon's own reading path can take;
(b) the daemon, all machines already past learning: per-sensor messages `plant/<m>/<s>`
    (`{"ts", "value"}`), then per-machine batches `plant/<m>` (a list of records). The
    rate is readings accepted (from /metrics) over the time from resume until every
    reading is accepted and every window it completes is scored.

Prints a table and one JSON line. Each phase has a deadline, so a run stays bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from benchmarks.common import (
    LEARN_ROWS,
    SENSOR_NAMES,
    Load,
    Message,
    batch_messages,
    bench_config,
    box_busy,
    box_niced,
    box_share,
    learn,
    loadavg,
    niced_share,
    value,
)
from service.transport.paho_client import FastClient
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
class Tally:
    """Counts messages and notes when the first and the last came."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = threading.Event()

    def on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.time()
        if not self.count:
            self.first = now
        self.count += 1
        self.last = now
        if self.count >= self.expected:
            self.done.set()


def _count(port: int, topic: str, expected: int, aemons: bool, conn: Connection) -> None:
    """Child process: a paho subscriber that only counts (`aemons`: aemon's client, a paho
    subclass). Like the daemon it holds a persistent MQTT 5 session with a QoS 1
    subscription (paho acknowledges each message), so the broker queues for it while it is
    stopped. Reports (count, first, last)."""
    tally = Tally(expected)
    subscribed = threading.Event()
    cls = FastClient if aemons else paho.Client
    client = cls(
        CallbackAPIVersion.VERSION2, client_id=f"counter-{os.getpid()}", protocol=paho.MQTTv5
    )
    if isinstance(client, FastClient):
        client.deliver = lambda topic, payload, mid, qos: tally.on_message(None, None, None)
    client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = tally.on_message
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 600
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    conn.send(subscribed.wait(10))
    tally.done.wait(150)
    client.loop_stop()
    client.disconnect()
    conn.send((tally.count, tally.first, tally.last))


class CountingSubscriber:
    """The count-only subscriber as a process, so that it can be stopped like the daemon."""

    def __init__(self, port: int, topic: str, expected: int, aemons: bool) -> None:
        self.conn, child = mp.Pipe()
        self.proc = mp.Process(target=_count, args=(port, topic, expected, aemons, child))
        self.proc.start()
        if not self.conn.poll(30) or not self.conn.recv():
            self.proc.kill()
            raise RuntimeError("counter not subscribed")

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def result(self, timeout: float) -> tuple[int, float, float]:
        if not self.conn.poll(timeout):
            self.proc.kill()
            raise RuntimeError("counter did not finish")
        counted: tuple[int, float, float] = self.conn.recv()
        self.proc.join(10)
        return counted


@contextlib.contextmanager
def paused(pid: int) -> Iterator[None]:
    """SIGSTOP `pid` while the body runs (the broker queues its session's messages), SIGCONT
    after: the subscriber then drains a full queue, and the publisher is no limit."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def preload(pid: int, port: int, messages: list[Message]) -> tuple[float, float, float]:
    """Publishes `messages` while `pid` is stopped; returns (publish start, publish end,
    the time the subscriber was resumed)."""
    load = Load(port, messages)
    with paused(pid):
        load.go()
        pub_start, pub_end = load.finish()
        resumed = time.time()
    return pub_start, pub_end, resumed


def ceiling(
    port: int, messages: int, machines: int, sensors: int, aemons: bool = False
) -> dict[str, float]:
    rows = max(1, messages // (machines * sensors))
    burst = list(per_sensor_messages("ceiling", machines, sensors, time.time(), rows))
    counter = CountingSubscriber(port, "ceiling/#", len(burst), aemons)
    pub_start, pub_end, resumed = preload(counter.pid, port, burst)
    count, first, last = counter.result(160)
    seconds = last - resumed
    return {
        "messages": len(burst),
        "received": count,
        "seconds": seconds,
        "first_after": first - resumed,
        "rate": count / seconds,
        "publish_rate": len(burst) / (pub_end - pub_start),
    }


# -- the daemon ----------------------------------------------------------------------------
@dataclass
class Counters:
    accepted: float
    rejected: float
    scored: float
    calls: float  # scoring calls (one per pipeline cycle with windows to score)
    scoring: float  # seconds the pipeline spent in them

    @classmethod
    def read(cls, daemon: Daemon) -> Counters:
        # Only these metrics: a full scrape of 200 machines took the daemon's GIL for
        # 10 - 40 ms, a share of the very rate it measures.
        text = daemon.metrics(SCRAPED)
        return cls(*(metric_value(text, name) for name in SCRAPED))


# Counters' fields, in order.
SCRAPED = (
    "aemon_readings_accepted_total",
    "aemon_readings_rejected_total",
    "aemon_windows_scored_total",
    "aemon_scoring_latency_seconds_count",
    "aemon_scoring_latency_seconds_sum",
)


def daemon_phase(
    daemon: Daemon,
    port: int,
    messages: list[Message],
    readings: int,
    windows: int,
    profile: Path | None,
) -> dict[str, float]:
    """Publishes `messages` while the daemon is stopped, resumes it and times it until it
    has taken in all `readings` and scored the `windows` they complete."""
    before = Counters.read(daemon)
    pub_start, pub_end, resumed = preload(daemon.pid, port, messages)
    deadline = time.monotonic() + 120
    accepted_at: float | None = None
    with profiled(daemon.pid, profile):
        pause = 0.25
        while True:
            time.sleep(pause)
            now = Counters.read(daemon)
            taken = now.accepted - before.accepted + now.rejected - before.rejected
            pause = next_poll(taken / readings, time.time() - resumed)
            if accepted_at is None and taken >= readings:
                accepted_at = time.time()
            if (taken >= readings and now.scored - before.scored >= windows) or (
                time.monotonic() > deadline
            ):
                break
    done_at = time.time()
    accepted = now.accepted - before.accepted
    seconds = done_at - resumed
    return {
        "messages": len(messages),
        "readings": readings,
        "accepted": accepted,
        "rejected": now.rejected - before.rejected,
        "scored": now.scored - before.scored,
        "scoring_calls": now.calls - before.calls,
        "scoring_seconds": now.scoring - before.scoring,
        "seconds": seconds,
        "accept_seconds": (accepted_at or done_at) - resumed,
        "rate": accepted / seconds,
        "messages_per_s": len(messages) / seconds,
        "publish_rate": len(messages) / (pub_end - pub_start),
    }


def next_poll(progress: float, elapsed: float) -> float:
    """Seconds to the next scrape: even a scrape of a few metrics renders hundreds of
    machines' samples, so scrape rarely while far from done and often (the end's resolution)
    near it. Half the predicted time left, within 0.05 - 1 s."""
    if progress <= 0:
        return 0.25
    left = elapsed * (1 - progress) / progress
    return min(1.0, max(0.05, left / 2))


@contextlib.contextmanager
def profiled(pid: int, out: Path | None) -> Iterator[None]:
    """py-spy (if asked for and installed) records the daemon's stacks meanwhile."""
    if out is None:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    # --gil: only the thread holding the GIL, i.e. where the one core Python code can use
    # goes; threads waiting for the GIL would otherwise show wherever they wait.
    command = [
        spy,
        "record",
        "-p",
        str(pid),
        "-o",
        str(out),
        "--format",
        "raw",
        "-r",
        "200",
        "--gil",
    ]
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
    busy0, niced0, load0 = box_busy(), box_niced(), loadavg()
    broker = Mosquitto(workdir).start()
    daemon_dir = workdir / "daemon"
    daemon_dir.mkdir()
    daemon = Daemon(daemon_dir, broker.port, bench_config(args.model))
    with running(broker):
        ceil = ceiling(broker.port, m * s * args.rows, m, s)
        own_ceil = ceiling(broker.port, m * s * args.rows, m, s, aemons=True)
        daemon.start()
        with running(daemon):
            t0 = time.time() - (LEARN_ROWS + args.rows + args.batch_rows + 120)
            learn_seconds = learn(daemon, broker.port, m, s, t0)
            t1 = t0 + LEARN_ROWS
            sensor_msgs = list(per_sensor_messages("plant", m, s, t1, args.rows))
            per_sensor = daemon_phase(
                daemon, broker.port, sensor_msgs, len(sensor_msgs), m * args.rows, args.profile
            )
            t2 = t1 + args.rows
            batches = list(batch_messages(m, s, t2, args.batch_rows, args.batch_size))
            batch = daemon_phase(
                daemon,
                broker.port,
                batches,
                m * s * args.batch_rows,
                m * args.batch_rows,
                batch_profile(args.profile),
            )
    return {
        "machines": m,
        "sensors": s,
        "learn_seconds": learn_seconds,
        "ceiling": ceil,
        "ceiling_aemon_client": own_ceil,
        "per_sensor": per_sensor,
        "batch": batch,
        "ratio_per_sensor": per_sensor["rate"] / ceil["rate"],
        "ratio_batch": batch["rate"] / ceil["rate"],
        "ratio_per_sensor_own_client": per_sensor["rate"] / own_ceil["rate"],
        "box_cpu_busy": box_share(busy0),
        "box_cpu_niced": niced_share(niced0),
        "loadavg_1m": [load0, loadavg()],
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"{result['machines']} machines x {result['sensors']} sensors, "
        f"learning took {result['learn_seconds']:.0f} s"
    )
    header = f"{'phase':<28}{'messages':>10}{'readings/s':>12}{'msgs/s':>10}{'pub msgs/s':>12}"
    print(header + f"{'rejected':>10}{'scored':>9}{'calls':>7}{'us/window':>11}")
    for key, label in (
        ("ceiling", "ceiling (count only)"),
        ("ceiling_aemon_client", "aemon's client, count only"),
    ):
        c = result[key]
        print(
            f"{label:<28}{c['messages']:>10}{c['rate']:>12.0f}{c['rate']:>10.0f}"
            f"{c['publish_rate']:>12.0f}{'-':>10}{'-':>9}{'-':>7}{'-':>11}"
        )
    for key, label in (
        ("per_sensor", "daemon, per-sensor"),
        ("batch", "daemon, per-machine batch"),
    ):
        p = result[key]
        print(
            f"{label:<28}{p['messages']:>10}{p['rate']:>12.0f}{p['messages_per_s']:>10.0f}"
            f"{p['publish_rate']:>12.0f}{p['rejected']:>10.0f}{p['scored']:>9.0f}"
            f"{p['scoring_calls']:>7.0f}{1e6 * p['scoring_seconds'] / max(1, p['scored']):>11.1f}"
        )
    print(
        f"box CPU busy {result['box_cpu_busy']:.0%} (this benchmark included), of which niced "
        f"(others' background work) {result['box_cpu_niced']:.0%}; load average "
        f"{result['loadavg_1m']} (start, end; other processes on the box lower every figure)"
    )
    print(
        f"daemon/ceiling: per-sensor {result['ratio_per_sensor']:.2f}, "
        f"batch {result['ratio_batch']:.2f} (readings/s over ceiling messages/s); per-sensor "
        f"over aemon's client counting: {result['ratio_per_sensor_own_client']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument("--sensors", type=int, default=8)
    parser.add_argument("--rows", type=int, default=40, help="per-sensor phase: seconds of data")
    parser.add_argument("--batch-rows", type=int, default=600, help="batch phase: seconds")
    parser.add_argument("--batch-size", type=int, default=10, help="records per batch message")
    parser.add_argument("--profile", type=Path, help="py-spy raw profile of the per-sensor phase")
    parser.add_argument("--model", help="model family, e.g. dense (default: the daemon's)")
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

"""Replicas sharing a plant through NATS JetStream: throughput, CPU, takeover, losses.

    python -m benchmarks.scaleout [--machines 300] [--sensors 8] [--replicas 1,2,3]

Per replica count n, on 127.0.0.1: a nats-server (JetStream), Mosquitto (for the alerts)
and n daemons with `input.kind = "nats"`. Each machine first gets 120 s of history, learnt
from (not timed). Then:

- **throughput**: a block of `--block` seconds of every machine's readings (per-machine
  messages of `--sensors` values, in the past, after the history) is published into the
  stream at once; readings/s is the accepted readings over the time the replicas took to
  take them all in, per replica (its own accepted count) and in total; CPU is each
  replica's CPU seconds over that time.
- **takeover** (n >= 2): every machine publishes once a second; replica n-1 is killed with
  SIGKILL; takeover_s is the time from the kill until every machine it had is scoring on
  another replica. Ten seconds later the publishing stops and the work-queue stream drains.
- **losses**: `lost` is what the stream still holds after the drain (readings no replica
  acknowledged); `late` the readings the survivors rejected as late (behind their windows:
  a reading delivered again after its machine moved on, lost if it was never taken in
  before, a copy if it was); `duplicates` the readings the survivors rejected as
  duplicates; `double_scored` at most the readings of the messages JetStream delivered
  again (what the killed replica had taken in but not yet acknowledged is taken in once
  more by its machine's new owner).

Prints a table, then one JSON line for the largest run:
{"replicas", "machines", "readings_per_s", "takeover_s", "lost", "late", "double_scored",
"duplicates"}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import orjson

from benchmarks.common import ProcStats, loadavg
from tests.support import Daemon, Mosquitto, NatsServer, metric_value, wait_until

HISTORY = 120
CONFIG: dict[str, dict[str, Any]] = {
    "window": {"length": 10, "stride": 1, "max_stale": 5.0, "lateness": 2.0},
    "learning": {"windows": 60},
    "discovery": {"period": 2.0},
    "model": {"kind": "conv", "epochs": 10},
    "ingest": {"max_payload_bytes": 16384},
}


def row(machine: int, sensors: int, ts: float) -> bytes:
    values = {
        f"s{j}": math.sin(ts / 10 + machine + j) + 0.01 * ((ts * 7 + j) % 3) for j in range(sensors)
    }
    return orjson.dumps({"ts": ts, "values": values})


async def _publish(url: str, machines: int, sensors: int, seconds: range) -> int:
    nc = await nats.connect(url)
    sent = 0
    try:
        for ts in seconds:
            for m in range(machines):
                await nc.publish(f"plant.m{m:04d}", row(m, sensors, float(ts)))
                sent += 1
            await nc.flush()
    finally:
        await nc.close()
    return sent


def publish(url: str, machines: int, sensors: int, seconds: range) -> int:
    return asyncio.run(_publish(url, machines, sensors, seconds))


def stream_messages(url: str, stream: str) -> int:
    async def ask() -> int:
        nc = await nats.connect(url)
        try:
            reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)
        finally:
            await nc.close()
        return int(orjson.loads(reply.data)["state"]["messages"])

    return asyncio.run(ask())


class Live:
    """Every machine once a second, ts = that second, from a thread of its own."""

    def __init__(self, url: str, machines: int, sensors: int) -> None:
        self.url, self.machines, self.sensors = url, machines, sensors
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        nc = await nats.connect(self.url)
        next_at = math.floor(time.time()) + 1.0
        while not self._stop.wait(max(0.0, next_at - time.time())):
            for m in range(self.machines):
                await nc.publish(f"plant.m{m:04d}", row(m, self.sensors, next_at))
            await nc.flush()
            next_at += 1.0
        await nc.close()

    def __enter__(self) -> Live:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def accepted(daemon: Daemon) -> float:
    text = daemon.metrics(["aemon_readings_accepted_total"])
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("aemon_readings_accepted_total{")
    )


def rejected(daemon: Daemon, reason: str) -> float:
    text = daemon.metrics(["aemon_readings_rejected_total"])
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("aemon_readings_rejected_total{") and f'reason="{reason}"' in line
    )


def states(daemons: list[Daemon]) -> dict[str, str]:
    found: dict[str, str] = {}
    for d in daemons:
        found.update({m: r["state"] for m, r in d.machines().items()})
    return found


@dataclass
class Result:
    replicas: int
    machines: int
    readings_per_s: float
    per_replica: list[float]
    cpu: list[float]
    takeover_s: float | None
    lost: int
    late: int
    double_scored: int
    duplicates: int


@contextlib.contextmanager
def stack(root: Path, replicas: int) -> Iterator[tuple[NatsServer, list[Daemon]]]:
    for name in ("nats", "mqtt"):
        (root / name).mkdir()
    server = NatsServer(root / "nats").start()
    broker = Mosquitto(root / "mqtt").start()
    daemons = []
    for i in range(replicas):
        (root / f"aemon-{i}").mkdir()
        nats_config = {"servers": [server.url], "replica": i, "replicas": replicas}
        config = {**CONFIG, "input": {"kind": "nats"}, "nats": nats_config}
        daemons.append(Daemon(root / f"aemon-{i}", broker.port, config))
    try:
        for d in daemons:
            d.start(ready=False)
        for d in daemons:
            d.wait_started()
        yield server, daemons
    finally:
        for d in daemons:
            with contextlib.suppress(Exception):
                d.stop()
        server.stop()
        broker.stop()


def run(replicas: int, machines: int, sensors: int, block: int) -> Result:
    names = [f"m{m:04d}" for m in range(machines)]
    now = int(time.time())
    history = range(now - HISTORY - block - 60, now - block - 60)
    with tempfile.TemporaryDirectory() as tmp, stack(Path(tmp), replicas) as (server, daemons):
        publish(server.url, machines, sensors, history)
        wait_until(lambda: all(states(daemons).get(n) == "scoring" for n in names), 900, "learnt")
        before = [accepted(d) for d in daemons]
        stats = [ProcStats(d.pid) for d in daemons]
        cpu_before = [s.cpu_seconds() for s in stats]
        started = time.monotonic()
        publish(server.url, machines, sensors, range(history.stop, history.stop + block))
        want = machines * sensors * block
        wait_until(lambda: sum(accepted(d) for d in daemons) - sum(before) >= want, 900, "block")
        seconds = time.monotonic() - started
        per_replica = [(accepted(d) - b) / seconds for d, b in zip(daemons, before, strict=True)]
        cpu = [(s.cpu_seconds() - c) / seconds for s, c in zip(stats, cpu_before, strict=True)]
        takeover = None
        survivors = daemons
        if replicas >= 2:
            with Live(server.url, machines, sensors):
                victim, survivors = daemons[-1], daemons[:-1]
                moved = list(victim.machines())
                victim.stop(signal.SIGKILL)
                killed = time.monotonic()
                wait_until(
                    lambda: all(states(survivors).get(n) == "scoring" for n in moved),
                    120,
                    "takeover",
                    interval=0.2,
                )
                takeover = time.monotonic() - killed
                time.sleep(10)
        wait_until(lambda: stream_messages(server.url, "PLANT_BY_MACHINE") == 0, 120, "drain")
        late = sum(rejected(d, "late") for d in survivors)
        duplicates = sum(rejected(d, "duplicate") for d in survivors)
        again = sum(metric_value(d.metrics(), "aemon_nats_redeliveries_total") for d in survivors)
        return Result(
            replicas,
            machines,
            sum(per_replica),
            per_replica,
            cpu,
            takeover,
            stream_messages(server.url, "PLANT_BY_MACHINE"),
            int(late),
            int(again * sensors),
            int(duplicates),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", type=int, default=300)
    parser.add_argument("--sensors", type=int, default=8)
    parser.add_argument("--block", type=int, default=120, help="seconds of readings timed")
    parser.add_argument("--replicas", default="1,2,3")
    args = parser.parse_args()
    results = []
    for n in (int(x) for x in args.replicas.split(",")):
        result = run(n, args.machines, args.sensors, args.block)
        results.append(result)
        print(f"done: {n} replica(s), load average {loadavg():.1f}", flush=True)
    print(
        f"\n{'replicas':>8} {'machines':>8} {'readings/s':>11} {'per replica':>24} "
        f"{'CPU cores each':>18} {'takeover s':>10} {'lost':>5} {'late':>5} {'double':>7} "
        f"{'dups':>5}"
    )
    for r in results:
        per = "/".join(f"{x:,.0f}" for x in r.per_replica)
        cpu = "/".join(f"{x:.2f}" for x in r.cpu)
        take = f"{r.takeover_s:.1f}" if r.takeover_s is not None else "-"
        print(
            f"{r.replicas:>8} {r.machines:>8} {r.readings_per_s:>11,.0f} {per:>24} {cpu:>18} "
            f"{take:>10} {r.lost:>5} {r.late:>5} {r.double_scored:>7} {r.duplicates:>5}"
        )
    largest = max(results, key=lambda r: r.replicas)
    print(
        orjson.dumps(
            {
                "replicas": largest.replicas,
                "machines": largest.machines,
                "readings_per_s": round(largest.readings_per_s),
                "takeover_s": round(largest.takeover_s, 1) if largest.takeover_s else None,
                "lost": largest.lost,
                "late": largest.late,
                "double_scored": largest.double_scored,
                "duplicates": largest.duplicates,
            }
        ).decode()
    )


if __name__ == "__main__":
    main()

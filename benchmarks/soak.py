"""Soak: the daemon's memory over minutes of steady load, through a real Mosquitto.

    python -m benchmarks.soak [--minutes 10] [--machines 1000] [--sensors 8]
                              [--warmup 4] [--every 5] [--faults 20]

After a fast learning phase (batched history), every machine sends one row a second of
wall-clock time, spread over the second, for `--minutes`; `--faults` machines carry a
fault from the second minute on, so alerts fire and update all along. Fine-tuning runs
all the time: the generated config makes every machine due every minute, on buffers
small enough to be full within the warm-up, so that what they hold does not pass for
growth. The daemon's RSS is sampled every `--every` seconds; the growth per minute is
the least-squares slope of RSS over the samples after `--warmup` minutes.

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    BENCH_CONFIG,
    Paced,
    PacedSpec,
    ProcStats,
    box_busy,
    box_share,
    counter_delta,
    learn,
    loadavg,
    quantile_between,
)
from tests.support import Daemon, Mosquitto, metric_value, running

FINETUNE = {
    "interval": 60.0,
    "admit_every": 1,
    "min_windows": 10,
    "margin_windows": 5,
    "recent_windows": 40,
    "reservoir_windows": 20,
    "episode_windows": 20,
}


def sample_rss(gen: Paced, proc: ProcStats, every: float) -> list[tuple[float, float]]:
    """(seconds since the live start, RSS MiB) every `every` seconds until the end."""
    samples: list[tuple[float, float]] = []
    while True:
        samples.append((time.time() - gen.start, proc.memory_mib()["rss_mib"]))
        if gen.done(every):
            return samples


def growth_per_minute(samples: list[tuple[float, float]], after: float) -> tuple[float, float]:
    """Least-squares slope of RSS (MiB per minute) over the samples after `after` seconds,
    and the residuals' standard deviation (MiB): a leak is a slope well above the noise."""
    t, rss = (np.array(v) for v in zip(*[(s, r) for s, r in samples if s >= after], strict=True))
    slope, intercept = np.polyfit(t / 60, rss, 1)
    residuals = rss - (slope * t / 60 + intercept)
    return float(slope), float(residuals.std())


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    m, s = args.machines, args.sensors
    seconds = int(args.minutes * 60)
    faults = {k * max(1, m // max(1, args.faults)): 60 for k in range(min(args.faults, m))}
    broker = Mosquitto(workdir).start()
    daemon_dir = workdir / "daemon"
    daemon_dir.mkdir()
    daemon = Daemon(daemon_dir, broker.port, BENCH_CONFIG | {"finetune": FINETUNE})
    with running(broker):
        daemon.start()
        with running(daemon):
            learn_seconds = learn(daemon, broker.port, m, s, time.time() - 600)
            proc = ProcStats(daemon.pid)
            start_text, cpu0, wall0 = daemon.metrics(), proc.cpu_seconds(), time.time()
            busy0, load0 = box_busy(), loadavg()
            gen = Paced(broker.port, PacedSpec(m, s, seconds, faults))
            try:
                samples = sample_rss(gen, proc, args.every)
                gen.published()
            finally:
                gen.stop()
            end_text, cpu1, wall1 = daemon.metrics(), proc.cpu_seconds(), time.time()
            box = {"box_cpu_busy": box_share(busy0), "loadavg_1m": [load0, loadavg()]}
            memory = proc.memory_mib()
    slope, noise = growth_per_minute(samples, args.warmup * 60)
    after = [r for t, r in samples if t >= args.warmup * 60]
    return {
        "machines": m,
        "sensors": s,
        "minutes": args.minutes,
        "warmup_minutes": args.warmup,
        "learn_seconds": learn_seconds,
        "samples": len(samples),
        "rss_start_mib": samples[0][1],
        "rss_after_warmup_mib": after[0],
        "rss_end_mib": samples[-1][1],
        "rss_max_mib": max(r for _, r in samples),
        "rss_hwm_mib": memory["hwm_mib"],
        "growth_mib_per_min": slope,
        "residual_std_mib": noise,
        "readings_sent": m * s * seconds,
        "accepted": counter_delta(start_text, end_text, "aemon_readings_accepted_total"),
        "rejected": counter_delta(start_text, end_text, "aemon_readings_rejected_total"),
        "windows_scored": counter_delta(start_text, end_text, "aemon_windows_scored_total"),
        "alerts_raised": counter_delta(start_text, end_text, "aemon_alerts_raised_total"),
        "finetune_runs": {
            o: counter_delta(start_text, end_text, "aemon_finetune_runs_total", outcome=o)
            for o in ("promoted", "rejected_gate", "too_few_windows", "error")
        },
        "lag_p99": quantile_between(start_text, end_text, "aemon_pipeline_lag_seconds"),
        "scoring_p99": quantile_between(start_text, end_text, "aemon_scoring_latency_seconds"),
        "queue_depth_end": metric_value(end_text, "aemon_queue_depth"),
        "cpu_cores": (cpu1 - cpu0) / (wall1 - wall0),
        "rss_series": [(round(t, 1), round(r, 1)) for t, r in samples],
        **box,
    }


def print_table(r: dict[str, Any]) -> None:
    print(
        f"soak: {r['machines']} machines x {r['sensors']} sensors at 1 Hz for "
        f"{r['minutes']} min, fine-tunes due every minute; learning took "
        f"{r['learn_seconds']:.0f} s"
    )
    runs = ", ".join(f"{k} {v:.0f}" for k, v in r["finetune_runs"].items())
    rows = [
        (
            "RSS start / after warm-up / end",
            f"{r['rss_start_mib']:.0f} / "
            f"{r['rss_after_warmup_mib']:.0f} / {r['rss_end_mib']:.0f} MiB",
        ),
        ("RSS max / high-water mark", f"{r['rss_max_mib']:.0f} / {r['rss_hwm_mib']:.0f} MiB"),
        (
            f"RSS growth after {r['warmup_minutes']} min warm-up",
            f"{r['growth_mib_per_min']:+.2f} MiB/min (residual sd {r['residual_std_mib']:.1f})",
        ),
        (
            "readings sent / accepted / rejected",
            f"{r['readings_sent']} / {r['accepted']:.0f} / {r['rejected']:.0f}",
        ),
        ("windows scored / alerts raised", f"{r['windows_scored']:.0f} / {r['alerts_raised']:.0f}"),
        ("fine-tunes", runs),
        (
            "pipeline lag p99 / scoring p99",
            f"{r['lag_p99'] * 1e3:.0f} / {r['scoring_p99'] * 1e3:.1f} ms",
        ),
        ("queue depth at the end", f"{r['queue_depth_end']:.0f}"),
        ("daemon CPU", f"{r['cpu_cores']:.2f} cores"),
        ("box CPU busy / load average", f"{r['box_cpu_busy']:.0%} / {r['loadavg_1m']}"),
    ]
    for label, text in rows:
        print(f"{label:<38}{text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--sensors", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=4.0, help="minutes left out of the fit")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--faults", type=int, default=20, help="machines with a fault")
    args = parser.parse_args()
    if args.minutes - args.warmup < 2:
        parser.error("--minutes must leave at least 2 minutes after --warmup")
    with tempfile.TemporaryDirectory(prefix="aemon-soak-") as tmp:
        result = run(args, Path(tmp))
    print_table(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

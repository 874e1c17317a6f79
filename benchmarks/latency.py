"""Alert latency, scoring latency with and without a fine-tune, CPU and memory, at 1 Hz.

    python -m benchmarks.latency [--machines 1000] [--sensors 8] [--seconds 90]
                                 [--faults 50] [--finetune-after 30] [--burst]
                                 [--scrape-interval 15] [--page]

Mosquitto, the daemon and the load generator run as processes of their own on 127.0.0.1.
After a fast learning phase (batched history), every machine sends one row a second of
wall-clock time (`plant/<m>`, `{"ts", "values"}`), spread over the second (`--burst`: all
at its top); `--faults` machines get a fault (one sensor x3) at staggered times. For every
alert raised, the latency runs from the publish of the reading that completed its window
(the first row at `updated_at + lateness`) to the alert's arrival on `aemon/events`.

The run has two measured phases. In the first, no fine-tune runs. The generated config
makes every machine's fine-tune due `--finetune-after` seconds after its first live window
(with thresholds low enough that the recent windows qualify), so in the second phase the
fine-tuner works through one job per machine while the pipeline scores. Scoring latency
(one cycle's model calls) and pipeline lag (a message's arrival to the scores of the
windows it completed) are `histogram_quantile` over each phase's increase of the daemon's
histograms; `aemon_finetune_runs_total` and the fine-tunes' summed duration show that the
fine-tuner was busy. CPU and RSS come from /proc/<pid>.

`--page` keeps the status pages open through the live run: a viewer polls every 5 s as
the plant page and one faulty machine's page do (`benchmarks.status_page.Viewer`). Every
run ends by loading both pages in Debian's chromium: time to the data drawn, bytes fetched.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.common import (
    BENCH_CONFIG,
    Paced,
    PacedSpec,
    ProcStats,
    all_scoring,
    bench_config,
    box_busy,
    box_niced,
    box_share,
    counter_delta,
    learn,
    loadavg,
    longest_between,
    niced_share,
    percentile,
    quantile_between,
    sleep_until,
)
from benchmarks.status_page import Viewer, browser_load
from tests.support import Daemon, Mosquitto, metric_value, running

LATENESS = float(BENCH_CONFIG["window"]["lateness"])
WARMUP = int(BENCH_CONFIG["window"]["length"]) + 5  # a gap restarts windows: refill first
# The first live window: the gap after the history restarts the windows, which need
# `length` rows and the lateness watermark.
FIRST_WINDOW = int(BENCH_CONFIG["window"]["length"] + LATENESS) + 1
OUTCOMES = ("promoted", "rejected_gate", "too_few_windows", "error")


def finetune_config(after: int) -> dict[str, Any]:
    """Fine-tunes due `after` seconds after a machine's first live window (the first is
    too_few_windows and starts the clock), on windows the live phase admits by then."""
    return {
        "interval": float(after),
        "min_windows": 10,
        "admit_every": 1,
        "margin_windows": 5,
        "recent_windows": 60,
        "reservoir_windows": 20,
    }


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

    def events(self) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return list(self.raised)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# -- figures -------------------------------------------------------------------------------
def alert_latencies(
    raised: list[tuple[float, dict[str, Any]]], published: dict[tuple[int, float], float]
) -> tuple[list[tuple[float, float]], int]:
    """Arrival time and latency of each alert, in order of arrival; the latency runs from
    the publish of the row that completed its window."""
    latencies: list[tuple[float, float]] = []
    unmatched = 0
    for arrived, event in sorted(raised, key=lambda pair: pair[0]):
        machine = int(event["machine"].removeprefix("m"))
        window_end = datetime.fromisoformat(event["updated_at"]).timestamp()
        trigger = math.ceil(window_end + LATENESS)
        sent = published.get((machine, float(trigger)))
        if sent is None:
            unmatched += 1
        else:
            latencies.append((arrived, arrived - sent))
    return latencies, unmatched


def phase_figures(before: str, after: str, seconds: float) -> dict[str, Any]:
    """Scoring and lag quantiles, and what the fine-tuner did, between two scrapes."""
    runs = {
        o: counter_delta(before, after, "aemon_finetune_runs_total", outcome=o) for o in OUTCOMES
    }
    busy = counter_delta(before, after, "aemon_finetune_duration_seconds_sum")
    return {
        "seconds": seconds,
        "scoring_p50": quantile_between(before, after, "aemon_scoring_latency_seconds", 0.5),
        "scoring_p99": quantile_between(before, after, "aemon_scoring_latency_seconds"),
        "lag_p99": quantile_between(before, after, "aemon_pipeline_lag_seconds"),
        "cycle_p99": quantile_between(before, after, "aemon_pipeline_cycle_seconds"),
        "cycle_longest_at_most": longest_between(before, after, "aemon_pipeline_cycle_seconds"),
        "scoring_cycles": counter_delta(before, after, "aemon_scoring_latency_seconds_count"),
        "finetune_runs": runs,
        "finetuner_busy": busy / seconds,
    }


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    m, s, after = args.machines, args.sensors, args.finetune_after
    n_faults = max(1, min(args.faults, m))
    span = max(1, args.seconds - WARMUP - 15)  # onsets spread, each with 15 s to raise
    faults = {k * (m // n_faults): WARMUP + k * span // n_faults for k in range(n_faults)}
    broker = Mosquitto(workdir).start()
    daemon_dir = workdir / "daemon"
    daemon_dir.mkdir()
    config = bench_config(args.model) | {"finetune": finetune_config(after)}
    daemon = Daemon(daemon_dir, broker.port, config)
    with running(broker):
        daemon.start()
        alerts = Alerts(broker.port)
        with running(daemon, alerts):
            learn_seconds = learn(daemon, broker.port, m, s, time.time() - 600)
            assert all_scoring(daemon, m)
            proc = ProcStats(daemon.pid)
            start_text, cpu0, wall0 = daemon.metrics(), proc.cpu_seconds(), time.time()
            busy0, niced0, load0 = box_busy(), box_niced(), loadavg()
            viewer = Viewer(daemon.url(""), "m0") if args.page else None
            gen = Paced(broker.port, PacedSpec(m, s, args.seconds, faults, args.burst))
            if viewer is not None:
                viewer.start()
            try:
                texts, rss_peak, scrapes = scrape_phases(daemon, gen, proc, args)
                published = gen.published()
            finally:
                gen.stop()
                if viewer is not None:
                    viewer.stop()
            caught_up = catch_up(daemon, start_text, m * s * args.seconds)
            time.sleep(LATENESS + 3)  # the last alerts: a window waits for the watermark
            end_text, cpu1, wall1 = daemon.metrics(), proc.cpu_seconds(), time.time()
            box = {
                "box_cpu_busy": box_share(busy0),
                "box_cpu_niced": niced_share(niced0),
                "loadavg_1m": [load0, loadavg()],
            }
            memory = proc.memory_mib()
            raised = alerts.events()
            page_load = browser_load(daemon.url(""), "m0", m)
    timeline, unmatched = alert_latencies(
        [(t, e) for t, e in raised if int(e["machine"].removeprefix("m")) in faults], published
    )
    latencies = [latency for _, latency in timeline]
    a0, a1, b0, b1 = texts
    marks = phase_marks(args)
    phase_a, phase_b = marks[1] - marks[0], args.seconds - marks[2]
    return {
        "machines": m,
        "sensors": s,
        "seconds": args.seconds,
        "burst": args.burst,
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
        # With tens of alerts p99 is the maximum: the list shows whether it is one outlier.
        "alert_latencies_ms": sorted(round(x * 1e3, 1) for x in latencies),
        # When the slow ones came: seconds into the live run (phases: `phase_marks`), ms.
        "alert_timeline": [[round(t - wall0, 1), round(x * 1e3, 1)] for t, x in timeline],
        "phase_marks": phase_marks(args),
        "scoring_latency_p99": quantile_between(
            start_text, end_text, "aemon_scoring_latency_seconds"
        ),
        "without_finetune": phase_figures(a0, a1, phase_a),
        "with_finetune": phase_figures(b0, b1, phase_b),
        "finetune_runs_total": {
            o: metric_value(end_text, "aemon_finetune_runs_total", outcome=o)
            for o in ("initial", *OUTCOMES)
        },
        "readings_per_s": m * s,
        "caught_up_after_s": caught_up,
        "accepted": counter_delta(start_text, end_text, "aemon_readings_accepted_total"),
        "rejected": counter_delta(start_text, end_text, "aemon_readings_rejected_total"),
        "windows_scored": counter_delta(start_text, end_text, "aemon_windows_scored_total"),
        "windows_skipped": {
            reason: counter_delta(
                start_text, end_text, "aemon_windows_skipped_total", reason=reason
            )
            for reason in ("off", "maintenance")
        },
        "cpu_cores": (cpu1 - cpu0) / (wall1 - wall0),
        "rss_mib": memory["rss_mib"],
        "rss_peak_mib": max(rss_peak, memory["rss_mib"]),
        # A full /metrics renders in turns while the pipeline waits: slower, never in its way.
        "scrape_seconds_max": max(scrapes, default=float("nan")),
        "rss_hwm_mib": memory["hwm_mib"],
        **box,
        "page_open": viewer.figures() if viewer is not None else None,
        "page_load": page_load,
    }


def catch_up(daemon: Daemon, start_text: str, expected: int, timeout: float = 60) -> float:
    """Waits (up to `timeout`) until the daemon has taken in every reading sent; returns
    the seconds it took after the load ended, or -1 when it had not caught up by then
    (the figures of such a run describe a daemon that falls behind)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        text = daemon.metrics()
        if counter_delta(start_text, text, "aemon_readings_received_total") >= expected:
            return time.monotonic() - started
        time.sleep(0.5)
    return -1.0


def phase_marks(args: argparse.Namespace) -> list[int]:
    """Seconds into the live run of: the no-fine-tune phase's start and end, the
    fine-tuning phase's start (it ends with the run). Fine-tunes fall due about
    `finetune_after` seconds after the first live window."""
    due = FIRST_WINDOW + args.finetune_after
    return [FIRST_WINDOW + 3, due - 2, due]


def scrape_phases(
    daemon: Daemon, gen: Paced, proc: ProcStats, args: argparse.Namespace
) -> tuple[list[str], float, list[float]]:
    """/metrics at both ends of both phases, and every `--scrape-interval` seconds between
    them as Prometheus would (rendering a plant's page costs the daemon a few hundred ms of
    Python); the RSS peak meanwhile, and how long each scrape took."""
    marks = phase_marks(args)
    texts: list[str] = []
    scrapes: list[float] = []
    rss_peak = 0.0
    next_scrape = gen.start + args.scrape_interval
    for mark in [*marks, args.seconds]:
        while time.time() < gen.start + mark:
            rss_peak = max(rss_peak, proc.memory_mib()["rss_mib"])
            if time.time() >= next_scrape:
                asked = time.monotonic()
                daemon.metrics()
                scrapes.append(time.monotonic() - asked)
                next_scrape += args.scrape_interval
            sleep_until(min(gen.start + mark, next_scrape, time.time() + 1.0))
        if mark != args.seconds:
            texts.append(daemon.metrics())
    while not gen.done(1.0):
        rss_peak = max(rss_peak, proc.memory_mib()["rss_mib"])
    texts.append(daemon.metrics())
    return texts, rss_peak, scrapes


def print_table(r: dict[str, Any]) -> None:
    how = "all at the top of each second" if r["burst"] else "spread over each second"
    print(
        f"{r['machines']} machines x {r['sensors']} sensors at 1 Hz ({how}) for "
        f"{r['seconds']} s ({r['readings_per_s']:.0f} readings/s), "
        f"learning took {r['learn_seconds']:.0f} s"
    )
    rows = [
        ("alerts raised / faulty machines", f"{r['alerts_raised']} / {r['faulty_machines']}"),
        ("alerts on healthy machines", f"{r['alerts_on_healthy_machines']}"),
        ("alert latency p50", f"{r['alert_latency_p50'] * 1e3:.0f} ms"),
        ("alert latency p99", f"{r['alert_latency_p99'] * 1e3:.0f} ms"),
        ("alert latency max", f"{r['alert_latency_max'] * 1e3:.0f} ms"),
        ("alerts slower than 100 ms", f"{sum(x > 100 for x in r['alert_latencies_ms'])}"),
        ("scoring latency p99, whole run", f"{r['scoring_latency_p99'] * 1e3:.1f} ms"),
        ("readings accepted / rejected", f"{r['accepted']:.0f} / {r['rejected']:.0f}"),
        ("caught up after the load (s)", f"{r['caught_up_after_s']:.1f}"),
        ("windows scored", f"{r['windows_scored']:.0f}"),
        (
            "windows skipped (off, maintenance)",
            " / ".join(f"{v:.0f}" for v in r["windows_skipped"].values()),
        ),
        ("daemon CPU", f"{r['cpu_cores']:.2f} cores ({r['cpu_cores'] / 2:.0%} of 2)"),
        ("daemon RSS end / peak", f"{r['rss_mib']:.0f} / {r['rss_peak_mib']:.0f} MiB"),
        ("slowest /metrics scrape", f"{r['scrape_seconds_max'] * 1e3:.0f} ms"),
        ("box CPU busy (all processes)", f"{r['box_cpu_busy']:.0%}"),
        ("of which niced (fine-tuner, background)", f"{r['box_cpu_niced']:.0%}"),
        ("load average 1 min (start, end)", f"{r['loadavg_1m']}"),
    ]
    for label, text in rows:
        print(f"{label:<34}{text:>22}")
    print(f"{'':<34}{'no fine-tune':>14}{'fine-tuning':>14}")
    a, b = r["without_finetune"], r["with_finetune"]
    for label, key, scale, unit in (
        ("phase length", "seconds", 1, "s"),
        ("scoring latency p50", "scoring_p50", 1e3, "ms"),
        ("scoring latency p99", "scoring_p99", 1e3, "ms"),
        ("pipeline lag p99", "lag_p99", 1e3, "ms"),
        ("pipeline cycle p99", "cycle_p99", 1e3, "ms"),
        ("longest pipeline cycle, at most", "cycle_longest_at_most", 1e3, "ms"),
        ("fine-tuner busy (share of phase)", "finetuner_busy", 100, "%"),
    ):
        print(f"{label:<34}{a[key] * scale:>11.1f} {unit:<2}{b[key] * scale:>11.1f} {unit:<2}")
    for outcome in OUTCOMES:
        runs = (a["finetune_runs"][outcome], b["finetune_runs"][outcome])
        print(f"{'fine-tunes ' + outcome:<34}{runs[0]:>14.0f}{runs[1]:>14.0f}")
    total = ", ".join(f"{k} {v:.0f}" for k, v in r["finetune_runs_total"].items())
    print(f"fine-tuner runs, whole daemon life: {total}")
    print(
        f"scoring p99 while fine-tuning / without: "
        f"{b['scoring_p99'] / a['scoring_p99']:.2f} (target < 2)"
    )
    if r["page_open"]:
        for page, f in r["page_open"].items():
            print(
                f"{page} page open: {f['polls']} polls, p50 {f['p50_ms']:.0f} ms, "
                f"max {f['max_ms']:.0f} ms, {f['sent_kib']:.0f} KiB sent a poll"
            )
    for page, f in r["page_load"].items():
        print(
            f"{page} page load in chromium: {f['load_s']:.2f} s to drawn, "
            f"{f['kib']:.0f} KiB in {f['requests']} requests"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--model", help="model family, e.g. dense (default: the daemon's)")
    parser.add_argument("--sensors", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=90, help="real-time phase, wall seconds")
    parser.add_argument("--faults", type=int, default=50, help="machines that get a fault")
    parser.add_argument(
        "--finetune-after",
        type=int,
        default=30,
        help="seconds after the first live windows when every machine's fine-tune is due",
    )
    parser.add_argument("--burst", action="store_true", help="all machines at once each second")
    parser.add_argument(
        "--scrape-interval",
        type=float,
        default=15.0,
        help="seconds between full /metrics scrapes (deploy/prometheus: 15 s)",
    )
    parser.add_argument(
        "--page", action="store_true", help="keep the status pages open (polled) meanwhile"
    )
    args = parser.parse_args()
    if args.seconds < phase_marks(args)[2] + 10:
        parser.error(f"--seconds must leave 10 s after {FIRST_WINDOW + 2} + --finetune-after")
    with tempfile.TemporaryDirectory(prefix="aemon-latency-") as tmp:
        result = run(args, Path(tmp))
    print_table(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Memory of the status page's history at a plant's size: every machine's ring of scores
and its kept windows, filled to the brim, measured with tracemalloc.

    python -m benchmarks.history_memory [--machines 1000] [--sensors 8] [--length 20]

Each machine is fed windows of one series (a row a second) for longer than the ring spans
(`HISTORY_SPAN`), one every `STEP` seconds (more would only replace a bucket's peak),
scored in cycles of 10, half of them while an alert fires (so the windows kept around an
alert are full too). The recent windows are copied into the history as the rows they
cover; those around an alert are references to the windows' own arrays, made here and in
a daemon by the windower, so both figures are printed: the history's own objects, and
with those arrays.
"""

from __future__ import annotations

import argparse
import gc
import json
import tracemalloc

import numpy as np

from service.core.config import ModelSettings
from service.core.types import Window
from service.scoring.detector import Detector
from service.stream.history import HISTORY_POINTS, HISTORY_SPAN, MachineHistory

CYCLE = 10
STEP = 5.0


def fill(
    history: MachineHistory, detector: Detector, sensors: tuple[str, ...], length: int
) -> None:
    rng = np.random.default_rng(0)
    seconds = int(HISTORY_SPAN * 1.1)
    series = rng.random((seconds + length, len(sensors)), np.float32)
    for cycle in range(int(seconds / STEP / CYCLE)):
        start = cycle * CYCLE * STEP
        ends = [int(start + i * STEP) + length for i in range(CYCLE)]
        windows = [
            Window("m", float(end), sensors, series[end - length : end].copy()) for end in ends
        ]
        scores = rng.random(CYCLE).astype(np.float32)
        errors = rng.random((CYCLE, len(sensors))).astype(np.float32)
        firing = start > seconds // 2
        history.record(detector, windows, scores, errors, [firing] * CYCLE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--sensors", type=int, default=8)
    parser.add_argument("--length", type=int, default=20)
    args = parser.parse_args()
    sensors = tuple(f"s{i}" for i in range(args.sensors))
    detector = Detector.new(sensors, args.length, ModelSettings(kind="dense"))
    one = MachineHistory(period=1.0)
    fill(one, detector, sensors, args.length)
    kept = {id(k.values): k.values.nbytes for k in one.snapshot().around_alert}
    recent_rows = one.recent_nbytes()
    del one
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    histories = []
    for _ in range(args.machines):
        history = MachineHistory(period=1.0)
        fill(history, detector, sensors, args.length)
        histories.append(history)
    gc.collect()
    total = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    window_bytes = sum(kept.values()) * args.machines
    figures = {
        "machines": args.machines,
        "sensors": args.sensors,
        "window_length": args.length,
        "ring_points": HISTORY_POINTS,
        "ring_span_s": HISTORY_SPAN,
        "ring_arrays_mib": histories[0].nbytes() * args.machines / 2**20,
        "recent_windows_rows_mib": recent_rows * args.machines / 2**20,
        "alert_windows_per_machine": len(kept),
        "alert_windows_arrays_mib": window_bytes / 2**20,
        "total_with_windows_mib": total / 2**20,
        "total_without_alert_window_arrays_mib": (total - window_bytes) / 2**20,
    }
    for key, value in figures.items():
        print(f"{key:<34}{value:>12.1f}" if isinstance(value, float) else f"{key:<34}{value:>12}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

"""Memory of a plant's models in the scoring stack, and of oneDNN's kernel cache, in-process.

    python -m benchmarks.model_memory [--machines 1000] [--sensors 8] [--length 20]
                                      [--model conv] [--onednn-cache 256]

Builds `--machines` untrained detectors of the default family, scores one window of each
through a `StackedScorer` (which takes their weights into its rows), then scores calls of
1 to 63 models, each a shape oneDNN compiles convolution kernels for, twice over. Prints
resident memory (/proc) after each step, what glibc's malloc holds in use (mallinfo2) and
the Python object arenas (pymalloc): memory outside both is torch's own (oneDNN's kernels).
`--onednn-cache` sets ONEDNN_PRIMITIVE_CACHE_CAPACITY before the first convolution (0
leaves oneDNN's default of 1,024, as before the daemon bounded it).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import tempfile

import numpy as np
import structlog
import torch

from service.core.config import ModelSettings
from service.scoring.detector import Detector
from service.scoring.runtime import ONEDNN_CACHE_ENV, ONEDNN_CACHE_SHAPES
from service.scoring.stacked import StackedScorer


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def malloc_in_use_mib() -> float:
    """glibc's bytes in use (heap and mmapped chunks); NaN where mallinfo2 is missing."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (AttributeError, OSError):
        return float("nan")
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return float(info.uordblks + info.hblkhd) / 2**20


def pymalloc_arenas_mib() -> float:
    """Python's object arenas (1 MiB each in 3.11), from sys._debugmallocstats."""
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        for line in out.read().decode().splitlines():
            if line.startswith("# arenas allocated current"):
                return float(line.split("=")[1].replace(",", ""))
    return float("nan")


def snapshot() -> dict[str, float]:
    gc.collect()
    return {"rss": rss_mib(), "malloc": malloc_in_use_mib(), "pymalloc": pymalloc_arenas_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--sensors", type=int, default=8)
    parser.add_argument("--length", type=int, default=20)
    parser.add_argument("--model", default="conv")
    parser.add_argument("--onednn-cache", type=int, default=ONEDNN_CACHE_SHAPES)
    args = parser.parse_args()
    if args.onednn_cache:  # before the first convolution: oneDNN reads it then
        os.environ[ONEDNN_CACHE_ENV] = str(args.onednn_cache)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    torch.set_num_threads(1)
    sensors = tuple(f"s{i}" for i in range(args.sensors))
    settings = ModelSettings(kind=args.model)
    rng = np.random.default_rng(0)
    steps = [("imports", snapshot())]
    detectors = [Detector.new(sensors, args.length, settings) for _ in range(args.machines)]
    steps.append(("detectors built", snapshot()))
    scorer = StackedScorer()
    shape = (1, args.length, args.sensors)
    scorer.score(
        {f"m{i}": (d, rng.random(shape, dtype=np.float32)) for i, d in enumerate(detectors)}
    )
    steps.append(("scored in the stack", snapshot()))
    for sweep in (1, 2):
        for k in range(1, 64):
            scorer.score(
                {
                    f"m{i}": (d, rng.random(shape, dtype=np.float32))
                    for i, d in enumerate(detectors[:k])
                }
            )
        steps.append((f"calls of 1 to 63 models, sweep {sweep}", snapshot()))
    print(
        f"{args.machines} {args.model} detectors, {args.sensors} sensors, windows of "
        f"{args.length}; oneDNN cache {args.onednn_cache or 'default (1,024)'}"
    )
    print(f"{'step':<36}{'RSS':>9}{'malloc':>9}{'pymalloc':>10}  (MiB, change)")
    before = steps[0][1]
    for name, now in steps:
        change = {k: now[k] - before[k] for k in now}
        print(
            f"{name:<36}{now['rss']:>9.1f}{change['malloc']:>+9.1f}{change['pymalloc']:>+10.1f}"
            f"  rss {change['rss']:+.1f}"
        )
        before = now
    members_with_module = sum(d.module is not None for d in detectors)
    print(f"stack members that keep a module of their own: {members_with_module}")
    print(json.dumps({"args": vars(args), "steps": dict(steps)}))


if __name__ == "__main__":
    main()

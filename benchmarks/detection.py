"""Detection quality on SKAB valve1: aemon's families and peers through the same code.

Every detector sees the same windows (the daemon's `MachineWindower`), goes through the
same alert tracker (k of n to raise, m clean to resolve) and the same SKAB metrics, with
the default `Settings()`; only the scorer differs. SKAB's published figures (all 34 files,
not causal; see `shared/datasets/skab/README.md`) are printed beside for orientation.

    .venv/bin/python benchmarks/detection.py [--data DIR] [--warmup 400]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from service.config import Settings, ThresholdSettings
from service.evaluate import Scorer, ScorerFactory, default_factory, evaluate_paths, summarise
from service.logs import configure_logging
from service.models import family_names
from service.threshold import calibrate
from service.types import FloatArray

DEFAULT_DATA = Path(__file__).parents[2] / "shared" / "datasets" / "skab"

# SKAB README (commit b2c0d46): F1, FAR %, MAR % over all 34 labelled files.
PUBLISHED = {
    "Conv-AE": (0.78, 13.55, 28.02),
    "T-squared+Q (PCA)": (0.76, 26.62, 24.92),
    "LSTM-AE": (0.74, 29.96, 25.92),
    "Isolation forest": (0.29, 2.56, 82.89),
    "always alarm": (0.70, 100.0, 0.0),
}


class AlwaysAlarm:
    """Every window is anomalous: the floor that F1 alone does not reveal."""

    version = 0

    def __init__(self, sensors: tuple[str, ...]) -> None:
        self.threshold = 0.0

    def fit(self, windows: FloatArray, threshold: ThresholdSettings) -> object:
        return None

    def score_many(self, windows: FloatArray) -> tuple[FloatArray, FloatArray]:
        errors = np.ones((len(windows), windows.shape[-1]), dtype=np.float32)
        return errors.mean(axis=1), errors


class PcaT2Q:
    """PCA on z-scored rows (the newest row of each window), Hotelling T² and Q (SPE),
    each against its own limit calibrated like aemon's threshold; the score is the larger
    ratio to its limit, so 1.0 is the threshold."""

    version = 0
    explained = 0.9

    def __init__(self, sensors: tuple[str, ...]) -> None:
        self.threshold = 1.0
        self.limits = np.ones(2)

    def fit(self, windows: FloatArray, threshold: ThresholdSettings) -> object:
        rows = windows[:, -1, :].astype(np.float64)
        self.mean = rows.mean(axis=0)
        self.std = np.maximum(rows.std(axis=0), 1e-6)
        _, s, vt = np.linalg.svd((rows - self.mean) / self.std, full_matrices=False)
        var = s**2 / max(len(rows) - 1, 1)
        k = int(np.searchsorted(np.cumsum(var) / var.sum(), self.explained) + 1)
        self.components, self.var = vt[:k], np.maximum(var[:k], 1e-9)
        t2, q = self._stats(windows)
        self.limits = np.array([calibrate(t2, threshold), calibrate(q, threshold)])
        return None

    def _stats(self, windows: FloatArray) -> tuple[FloatArray, FloatArray]:
        z = (windows[:, -1, :].astype(np.float64) - self.mean) / self.std
        t = z @ self.components.T
        residual = z - t @ self.components
        return (t**2 / self.var).sum(axis=1), (residual**2).sum(axis=1)

    def score_many(self, windows: FloatArray) -> tuple[FloatArray, FloatArray]:
        t2, q = self._stats(windows)
        scores = np.maximum(t2 / self.limits[0], q / self.limits[1]).astype(np.float32)
        z = (windows[:, -1, :].astype(np.float64) - self.mean) / self.std
        return scores, (z**2).astype(np.float32)


def detectors(settings: Settings) -> dict[str, Callable[[], ScorerFactory]]:
    out: dict[str, Callable[[], ScorerFactory]] = {}
    for kind in family_names():
        model = settings.model.model_copy(update={"kind": kind})
        chosen = settings.model_copy(update={"model": model})
        out[f"aemon {kind}"] = functools.partial(default_factory, chosen)
    out["PCA T²+Q"] = lambda: PcaT2Q
    out["always alarm"] = lambda: AlwaysAlarm
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SKAB data folder")
    parser.add_argument("--warmup", type=int, default=400)
    args = parser.parse_args(argv)
    paths = sorted((args.data / "valve1").glob("*.csv"), key=lambda p: int(p.stem))
    if not paths:
        print(f"no valve1/*.csv under {args.data}", file=sys.stderr)
        return 2
    configure_logging("warning")
    settings = Settings()
    print(f"SKAB valve1: {len(paths)} files, warmup {args.warmup} rows, default settings")
    print(f"{'detector':<20} {'F1':>6} {'FAR %':>7} {'MAR %':>7} {'NAB std':>8} {'s':>6}")
    for name, make in detectors(settings).items():
        started = time.perf_counter()
        factory: Callable[[tuple[str, ...]], Scorer] = make()
        s = summarise(evaluate_paths(paths, settings, args.warmup, factory))
        took = time.perf_counter() - started
        print(
            f"{name:<20} {s['f1']:>6.3f} {100 * s['far']:>7.2f} {100 * s['mar']:>7.2f}"
            f" {s['nab_standard']:>8.2f} {took:>6.1f}"
        )
    print("\nSKAB published (all 34 files, non-causal row rule):")
    for name, (f1, far, mar) in PUBLISHED.items():
        print(f"{name:<20} {f1:>6.2f} {far:>7.2f} {mar:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Detection quality on SKAB valve1: aemon's families and peers through the same code.

Every detector sees the same windows (the daemon's `MachineWindower`), goes through the
same alert tracker (k of n to raise, m clean to resolve) and the same SKAB metrics, with
the default `Settings()`; only the scorer differs. Each row is scored on all 16 files and,
for an honest check of the defaults, on the odd-numbered files alone: the defaults were
chosen on the even-numbered ones. SKAB's published figures (all 34 files, not causal; see
the dataset's README) are printed in the same table for orientation.

    make bench-detection            # or: .venv/bin/python -m benchmarks.detection [--data DIR]

About 3 minutes on 2 cores (the LSTM takes most of it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from service.core.config import Settings, ThresholdSettings
from service.core.logs import configure_logging
from service.core.types import FloatArray
from service.offline.evaluate import ScorerFactory, default_factory, evaluate_paths, summarise
from service.offline.readers import read_skab
from service.offline.results import FileResult
from service.scoring.detector import Detector, split_holdout
from service.scoring.models import family_names
from service.scoring.threshold import calibrate

DEFAULT_DATA = Path(os.environ.get("SKAB_DIR", Path(__file__).parents[2] / "shared/datasets/skab"))
BASE_FILE = Path("anomaly-free") / "anomaly-free.csv"

# SKAB README (commit b2c0d46): F1, FAR %, MAR % over all 34 labelled files.
PUBLISHED = {
    "Conv-AE": (0.78, 13.55, 28.02),
    "MSET": (0.78, 39.73, 14.13),
    "T-squared+Q (PCA)": (0.76, 26.62, 24.92),
    "LSTM-AE": (0.74, 29.96, 25.92),
    "Isolation forest": (0.29, 2.56, 82.89),
    "always alarm": (0.70, 100.0, 0.0),
}

# The scoring of the defaults before held offsets were weighted and discounted: the plain
# mean squared error of a dense model, for comparison.
PLAIN_SCORING: dict[str, dict[str, object]] = {
    "model": {"kind": "dense", "offset_weight": 0.0, "drift_widening": 0.0, "offset_discount": 0.0},
    "threshold": {"margin": 1.5},
}


def is_held_out(path: Path) -> bool:
    """The odd-numbered files: never looked at while the defaults were chosen."""
    return int(path.stem) % 2 == 1


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


class RowPeer:
    """A peer that judges the newest row of each window, as SKAB's peers judge rows.

    Rows are z-scored on the training part; the threshold is calibrated like aemon's, on the
    held-out part of the learning windows (`split_holdout`), by the same method and margin.
    Per-sensor errors (for the alert's top sensors only) are the squared z-scores."""

    version = 0

    def __init__(self, sensors: tuple[str, ...]) -> None:
        self.threshold = float("inf")
        self.mean = np.zeros(len(sensors))
        self.std = np.ones(len(sensors))

    def fit(self, windows: FloatArray, threshold: ThresholdSettings) -> object:
        train, holdout = split_holdout(windows, threshold.holdout)
        rows = train[:, -1, :].astype(np.float64)
        self.mean = rows.mean(axis=0)
        self.std = np.maximum(rows.std(axis=0), 1e-9)
        self.fit_rows(self.z(train))
        self.threshold = self.calibrate(self.z(holdout), threshold)
        return None

    def z(self, windows: FloatArray) -> FloatArray:
        z: FloatArray = (windows[:, -1, :].astype(np.float64) - self.mean) / self.std
        return z

    def score_many(self, windows: FloatArray) -> tuple[FloatArray, FloatArray]:
        z = self.z(windows)
        return self.score_rows(z).astype(np.float32), np.square(z).astype(np.float32)

    def calibrate(self, rows: FloatArray, threshold: ThresholdSettings) -> float:
        return calibrate(self.score_rows(rows), threshold)

    def fit_rows(self, rows: FloatArray) -> None:
        raise NotImplementedError

    def score_rows(self, rows: FloatArray) -> FloatArray:
        raise NotImplementedError


class PcaT2Q(RowPeer):
    """PCA (90 % of the variance) with Hotelling T² and Q (SPE), each against its own limit;
    the score is the larger ratio to its limit, so the threshold is 1.0."""

    explained = 0.9

    def fit_rows(self, rows: FloatArray) -> None:
        _, s, vt = np.linalg.svd(rows, full_matrices=False)
        var = s**2 / max(len(rows) - 1, 1)
        k = int(np.searchsorted(np.cumsum(var) / var.sum(), self.explained) + 1)
        self.components, self.var = vt[:k], np.maximum(var[:k], 1e-9)
        self.limits = np.ones(2)

    def stats(self, rows: FloatArray) -> tuple[FloatArray, FloatArray]:
        t = rows @ self.components.T
        residual = rows - t @ self.components
        return (t**2 / self.var).sum(axis=1), (residual**2).sum(axis=1)

    def calibrate(self, rows: FloatArray, threshold: ThresholdSettings) -> float:
        t2, q = self.stats(rows)
        self.limits = np.maximum([calibrate(t2, threshold), calibrate(q, threshold)], 1e-12)
        return 1.0

    def score_rows(self, rows: FloatArray) -> FloatArray:
        t2, q = self.stats(rows)
        score: FloatArray = np.maximum(t2 / self.limits[0], q / self.limits[1])
        return score


class ExcessPeer(RowPeer):
    """A peer with a bounded raw score that does not start at 0 (normal rows score about 0.5
    in an Isolation Forest, and no row scores above 1): its score is the excess over the
    median raw score of the training rows. Its threshold is the quantile alone: a margin
    multiplies an unbounded error, but times a bounded score it can exceed what the most
    anomalous row scores, and the peer would never alarm."""

    def calibrate(self, rows: FloatArray, threshold: ThresholdSettings) -> float:
        return calibrate(self.score_rows(rows), threshold.model_copy(update={"margin": 1.0}))

    def fit_rows(self, rows: FloatArray) -> None:
        self.fit_raw(rows)
        self.typical = float(np.median(self.raw(rows)))

    def score_rows(self, rows: FloatArray) -> FloatArray:
        excess: FloatArray = np.maximum(self.raw(rows) - self.typical, 0.0)
        return excess

    def fit_raw(self, rows: FloatArray) -> None:
        raise NotImplementedError

    def raw(self, rows: FloatArray) -> FloatArray:
        raise NotImplementedError


class IsolationForestPeer(ExcessPeer):
    """scikit-learn's Isolation Forest (100 trees); the raw score is the negated
    `score_samples`, so higher is more anomalous."""

    def fit_raw(self, rows: FloatArray) -> None:
        from sklearn.ensemble import IsolationForest

        self.forest = IsolationForest(n_estimators=100, random_state=0).fit(rows)

    def raw(self, rows: FloatArray) -> FloatArray:
        score: FloatArray = -self.forest.score_samples(rows)
        return score


class HalfSpaceTreesPeer(ExcessPeer):
    """river's Half-Space Trees (25 trees of height 8), trained on the training rows in time
    order and frozen while scoring, as every other detector here is. Feature limits are the
    training range widened by its own width on each side."""

    def fit_raw(self, rows: FloatArray) -> None:
        from river.anomaly import HalfSpaceTrees

        low, high = rows.min(axis=0), rows.max(axis=0)
        width = np.maximum(high - low, 1e-9)
        limits = {
            str(i): (float(a - w), float(b + w))
            for i, (a, b, w) in enumerate(zip(low, high, width, strict=True))
        }
        self.trees = HalfSpaceTrees(
            n_trees=25, height=8, window_size=max(1, len(rows) // 2), limits=limits, seed=0
        )
        for row in rows:
            self.trees.learn_one(_features(row))

    def raw(self, rows: FloatArray) -> FloatArray:
        return np.array([self.trees.score_one(_features(row)) for row in rows])


def _features(row: FloatArray) -> dict[str, float]:
    return {str(i): float(v) for i, v in enumerate(row)}


class FitOnce:
    """Fits one detector per file and settings, whatever threshold method is evaluated: a
    second method recalibrates the same model on the same held-out scores, so the methods
    differ in the threshold alone (and the slow families are fitted once)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.fits: dict[bytes, tuple[Detector, FloatArray]] = {}
        # As the daemon does: one thread per core makes these small fits far slower.
        torch.set_num_threads(settings.model.torch_threads)

    def factory(self, threshold: ThresholdSettings) -> ScorerFactory:
        return lambda sensors: Recalibrated(self, sensors, threshold)

    def fitted(self, sensors: tuple[str, ...], windows: FloatArray) -> tuple[Detector, FloatArray]:
        key = hashlib.sha256(np.ascontiguousarray(windows).tobytes()).digest()
        if key not in self.fits:
            detector = Detector.new(sensors, self.settings.window.length, self.settings.model)
            report = detector.fit(windows, self.settings.threshold)
            self.fits[key] = (detector, report.holdout_scores)
        return self.fits[key]


class Recalibrated:
    """A detector from `FitOnce` with its threshold set by `threshold`'s method."""

    def __init__(
        self, fits: FitOnce, sensors: tuple[str, ...], threshold: ThresholdSettings
    ) -> None:
        self.fits, self.sensors, self.method = fits, sensors, threshold
        self.detector: Detector | None = None
        self.threshold = float("inf")
        self.version = 0

    def fit(self, windows: FloatArray, threshold: ThresholdSettings) -> object:
        fitted, holdout_scores = self.fits.fitted(self.sensors, windows)
        self.detector = fitted.clone()
        self.detector.threshold = self.threshold = calibrate(holdout_scores, self.method)
        return None

    def score_many(self, windows: FloatArray) -> tuple[FloatArray, FloatArray]:
        assert self.detector is not None, "fit first"
        return self.detector.score_many(windows)


@dataclass(frozen=True)
class Row:
    name: str
    settings: Settings
    factory: Callable[[], ScorerFactory]


def rows(settings: Settings, data: Path) -> list[Row]:
    out: list[Row] = []
    spot = settings.threshold.model_copy(update={"method": "spot"})
    for kind in family_names():
        chosen = with_update(settings, {"model": {"kind": kind}})
        fits = FitOnce(chosen)
        marker = " (default)" if kind == settings.model.kind else ""
        out.append(
            Row(f"aemon {kind}, quantile{marker}", chosen, _const(fits.factory(chosen.threshold)))
        )
        out.append(Row(f"aemon {kind}, spot", chosen, _const(fits.factory(spot))))
    plain = with_update(settings, PLAIN_SCORING)
    out.append(Row("aemon dense, plain MSE (old)", plain, lambda: default_factory(plain)))
    base = data / BASE_FILE
    if base.exists():
        label = f"aemon {settings.model.kind}, --base"
        out.append(Row(label, settings, lambda: default_factory(settings, read_skab(base))))
    for name, peer in (
        ("Half-Space Trees", HalfSpaceTreesPeer),
        ("PCA T²+Q", PcaT2Q),
        ("Isolation Forest", IsolationForestPeer),
        ("always alarm", AlwaysAlarm),
    ):
        out.append(Row(name, settings, _const(peer)))
    return out


def _const(factory: ScorerFactory) -> Callable[[], ScorerFactory]:
    return lambda: factory


def with_update(settings: Settings, update: dict[str, dict[str, object]]) -> Settings:
    """`settings` with some fields of some sections replaced."""
    changed = {
        section: getattr(settings, section).model_copy(update=fields)
        for section, fields in update.items()
    }
    return settings.model_copy(update=changed)


def figures(results: Sequence[FileResult]) -> dict[str, float]:
    """All files, then the tuning half and the held-out half apart."""
    held = [r for r in results if is_held_out(Path(r.name))]
    tuning = [r for r in results if not is_held_out(Path(r.name))]
    out = {}
    for prefix, part in (("", results), ("tune_", tuning), ("held_", held)):
        s = summarise(part)
        out |= {f"{prefix}f1": s["f1"], f"{prefix}far": 100 * s["far"]}
        out |= {f"{prefix}mar": 100 * s["mar"], f"{prefix}nab": s["nab_standard"]}
    return out


HEADER = (
    f"| {'detector':<34} | {'F1':>5} | {'FAR %':>6} | {'MAR %':>6} | {'NAB':>5} "
    f"| {'tuning F1':>9} | {'FAR %':>6} | {'MAR %':>6} "
    f"| {'held-out F1':>11} | {'FAR %':>6} | {'MAR %':>6} | {'s':>4} |"
)


SEPARATOR = "|" + "|".join("-" * len(cell) for cell in HEADER.split("|")[1:-1]) + "|"


def table_line(name: str, f: dict[str, float], seconds: float) -> str:
    return (
        f"| {name:<34} | {f['f1']:>5.3f} | {f['far']:>6.2f} | {f['mar']:>6.2f} | {f['nab']:>5.1f} "
        f"| {f['tune_f1']:>9.3f} | {f['tune_far']:>6.2f} | {f['tune_mar']:>6.2f} "
        f"| {f['held_f1']:>11.3f} | {f['held_far']:>6.2f} | {f['held_mar']:>6.2f} "
        f"| {seconds:>4.0f} |"
    )


def published_line(name: str, f1: float, far: float, mar: float) -> str:
    label = f"SKAB published: {name}"
    blank = "".join(f"| {'':>{w}} " for w in (9, 6, 6, 11, 6, 6, 4))
    return f"| {label:<34} | {f1:>5.2f} | {far:>6.2f} | {mar:>6.2f} | {'':>5} {blank}|"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, load {_load()}"


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SKAB data folder")
    parser.add_argument("--warmup", type=int, default=400)
    parser.add_argument("--only", help="run only the rows whose name contains this text")
    parser.add_argument("--json", type=Path, help="also write every row's figures here")
    args = parser.parse_args(argv)
    paths = sorted((args.data / "valve1").glob("*.csv"), key=lambda p: int(p.stem))
    if not paths:
        print(f"no valve1/*.csv under {args.data}", file=sys.stderr)
        return 2
    configure_logging("warning")
    settings = Settings()
    held = sum(is_held_out(p) for p in paths)
    print(f"SKAB valve1: {len(paths)} files ({held} held out), warmup {args.warmup} rows")
    print(f"machine: {machine()}\n")
    print(HEADER)
    print(SEPARATOR)
    out: dict[str, dict[str, float]] = {}
    for row in rows(settings, args.data):
        if args.only and args.only not in row.name:
            continue
        started = time.perf_counter()
        results = evaluate_paths(paths, row.settings, args.warmup, row.factory())
        took = time.perf_counter() - started
        out[row.name] = figures(results)
        print(table_line(row.name, out[row.name], took), flush=True)
    for name, (f1, far, mar) in PUBLISHED.items():
        print(published_line(name, f1, far, mar))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

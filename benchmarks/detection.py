"""Detection quality on SKAB valve1 and the Tennessee Eastman process (TEP), side by side:
every autoencoder family under both threshold methods, and peers, through the same code.

Every detector sees the same windows (the daemon's `MachineWindower`), goes through the
same alert tracker (k of n to raise, m clean to resolve) and the same point-wise metrics,
through `aemon evaluate`'s own code (`service.offline.evaluate`); only the scorer differs.
aemon's rows are the detectors `aemon evaluate` builds (`default_factory`) with the model
family and threshold method replaced; peers follow the same `Scorer` protocol, with their
own threshold rule (the configured quantile, spread and margin, on held-out windows).

- SKAB valve1 (`--data-skab`, default `$SKAB_DIR` or `../shared/datasets/skab` beside the
  repository): per file, a fresh detector fits on the windows of the first 400 rows and
  the rest streams causally. Each row is scored on all 16 files and on the odd-numbered
  ones alone (the held-out half: the scoring was designed on the even-numbered ones).
  SKAB's published figures (all 34 files, not causal) are printed for orientation.
- TEP (`--data-tep`, default `$TEP_DIR` or `../shared/datasets/tep`), by its protocol and
  `benchmarks/configs/tep.toml`: each detector learns once from the windows of
  `normal-train.csv` only (`aemon evaluate --base ... --warmup 0`), then scores
  `normal-test.csv` and `fault01.csv` .. `fault21.csv` causally, unchanged. Headline: the
  mean detection rate over the 18 faults other than 3, 9 and 15, the false alarm rate on
  `normal-test.csv` and on the fault files' first 160 rows (before the fault), and the
  detection rate of the faults that separate detectors (5, 10, 16, 19, 20, 21). The PCA
  figures of the data set's README are printed for orientation.

At the end, one JSON line with every figure (rates as fractions) and the time taken.

    make bench-detection       # or: .venv/bin/python -m benchmarks.detection [options]
    .venv/bin/python -m benchmarks.detection --only tep --families conv,lstm
    .venv/bin/python -m benchmarks.detection --quick     # conv and PCA only: a smoke run
    .venv/bin/python -m benchmarks.detection --families conv --seeds 0,1,2,3,4   # over seeds

About 8 minutes on 2 cores, nearly all of it the autoencoders' fits on SKAB's 16 files
(each family fits twice per file, once per threshold method, as `aemon evaluate` would);
TEP takes about a minute; `--seeds` multiplies aemon's rows' time by the number of seeds.
Figures and discussion: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.core.config import Settings, ThresholdSettings, load_settings
from service.core.logs import configure_logging
from service.core.types import FloatArray
from service.offline.evaluate import (
    Scorer,
    ScorerFactory,
    base_windows,
    default_factory,
    evaluate_paths,
    file_settings,
    replay,
    summarise,
)
from service.offline.readers import SkabFile, read_labelled, read_skab
from service.offline.report import TEP_FAULT, tep_headline
from service.offline.results import FileResult
from service.scoring.detector import split_holdout
from service.scoring.models import family_names
from service.scoring.threshold import calibrate

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SKAB = Path(os.environ.get("SKAB_DIR", REPO.parent / "shared/datasets/skab"))
DEFAULT_TEP = Path(os.environ.get("TEP_DIR", REPO.parent / "shared/datasets/tep"))
TEP_CONFIG = REPO / "benchmarks" / "configs" / "tep.toml"
BASE_FILE = Path("anomaly-free") / "anomaly-free.csv"
TEP_BASE = "normal-train.csv"
TEP_NORMAL = "normal-test.csv"
TEP_HARD = (5, 10, 16, 19, 20, 21)
METHODS = ("quantile", "spot")
DATASETS = ("skab", "tep")

# SKAB README (commit b2c0d46): F1, FAR, MAR over all 34 labelled files.
PUBLISHED = {
    "Conv-AE": (0.78, 0.1355, 0.2802),
    "MSET": (0.78, 0.3973, 0.1413),
    "T-squared+Q (PCA)": (0.76, 0.2662, 0.2492),
    "LSTM-AE": (0.74, 0.2996, 0.2592),
    "Isolation forest": (0.29, 0.0256, 0.8289),
    "always alarm": (0.70, 1.0, 0.0),
}

# The TEP data set's README: PCA T²+Q (31 components, no windowing) on these files.
TEP_REFERENCE: dict[str, dict[str, float]] = {
    "PCA, 99 % train limits": {
        "mean_detection_rate": 0.90,
        "far_normal_test": 0.29,
    },
    "PCA, oracle (FAR 5 %)": {
        "mean_detection_rate": 0.80,
        "far_normal_test": 0.05,
        **{
            f"dr_{k}": v
            for k, v in zip(TEP_HARD, (0.31, 0.61, 0.57, 0.26, 0.63, 0.53), strict=True)
        },
    },
}

# The scoring of the defaults before held offsets were weighted and discounted: the plain
# mean squared error of a dense model, for comparison.
PLAIN_SCORING: dict[str, dict[str, object]] = {
    "model": {"kind": "dense", "offset_weight": 0.0, "drift_widening": 0.0, "offset_discount": 0.0},
    "threshold": {"margin": 1.5, "spread": 0.0},
}

Update = dict[str, dict[str, object]]
Figures = dict[str, float]


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
    """A peer that judges the newest row of each window, as SKAB's peers judge rows (with
    `lags` > 0, the newest row and the `lags` rows before it, stacked side by side).

    Rows are z-scored on the training part; the threshold is calibrated like aemon's, on the
    held-out part of the learning windows (`split_holdout`), by the same method, spread and
    margin.
    Per-sensor errors (for the alert's top sensors only) are the newest row's squared
    z-scores."""

    version = 0
    lags = 0

    def __init__(self, sensors: tuple[str, ...]) -> None:
        self.threshold = float("inf")
        self.mean = np.zeros(len(sensors))
        self.std = np.ones(len(sensors))

    def fit(self, windows: FloatArray, threshold: ThresholdSettings) -> object:
        if windows.shape[1] <= self.lags:
            raise ValueError(f"{self.lags} lags need windows of more than {self.lags} steps")
        train, holdout = split_holdout(windows, threshold.holdout)
        rows = train[:, -1, :].astype(np.float64)
        self.mean = rows.mean(axis=0)
        self.std = np.maximum(rows.std(axis=0), 1e-9)
        self.fit_rows(self.features(train))
        self.threshold = self.calibrate(self.features(holdout), threshold)
        return None

    def z(self, windows: FloatArray) -> FloatArray:
        """The newest `lags + 1` rows of each window, z-scored: `[n, lags + 1, sensors]`."""
        z: FloatArray = (windows[:, -1 - self.lags :, :].astype(np.float64) - self.mean) / self.std
        return z

    def features(self, windows: FloatArray) -> FloatArray:
        """What the peer judges: the rows of `z`, side by side."""
        z = self.z(windows)
        return z.reshape(len(z), -1)

    def score_many(self, windows: FloatArray) -> tuple[FloatArray, FloatArray]:
        z = self.z(windows)
        scores = self.score_rows(z.reshape(len(z), -1))
        return scores.astype(np.float32), np.square(z[:, -1, :]).astype(np.float32)

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


class DynamicPca(PcaT2Q):
    """Dynamic PCA (Ku, Storer and Georgakis, 1995): PCA T²+Q on the newest row and the
    two before it side by side, so that the model sees how the variables move together
    from step to step, not only their levels; the usual choice of lags for TEP."""

    lags = 2


class ExcessPeer(RowPeer):
    """A peer with a bounded raw score that does not start at 0 (normal rows score about 0.5
    in an Isolation Forest, and no row scores above 1): its score is the excess over the
    median raw score of the training rows. Its threshold is the quantile alone: a margin or
    a spread widens an unbounded error, but on a bounded score it can exceed what the most
    anomalous row scores, and the peer would never alarm."""

    def calibrate(self, rows: FloatArray, threshold: ThresholdSettings) -> float:
        plain = threshold.model_copy(update={"margin": 1.0, "spread": 0.0})
        return calibrate(self.score_rows(rows), plain)

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


def base_factory(make: ScorerFactory, settings: Settings, base: SkabFile) -> ScorerFactory:
    """What `default_factory(settings, base)` does for aemon's detectors, for any scorer:
    one, fitted on the windows of the base file (cut as `aemon evaluate` cuts it), scores
    every file as it is (`--warmup 0`). Peers do not learn while they score, so one serves
    every file."""
    windows = replay(base, file_settings(settings, base.ts), len(base.ts)).before
    if len(windows) < 4:
        raise ValueError(f"{base.name}: only {len(windows)} windows in the base file")
    scorer = make(base.sensors)
    scorer.fit(np.stack([w.values for w in windows]), settings.threshold)

    def from_base(sensors: tuple[str, ...]) -> Scorer:
        if sensors != base.sensors:
            raise ValueError(f"base sensors {base.sensors} differ from {sensors}")
        return scorer

    return from_base


@dataclass(frozen=True)
class Entry:
    """A row of the tables: aemon's detector with `update` applied to the data set's
    settings, or a `peer` (which takes the settings' threshold section as it is)."""

    name: str
    update: Update
    peer: ScorerFactory | None = None
    skab_base: bool = False  # SKAB only: pre-trained on anomaly-free.csv (`--base`)

    def datasets(self) -> tuple[str, ...]:
        # TEP's protocol learns from its base file already: `--base` is every TEP row.
        return ("skab",) if self.skab_base else DATASETS

    def skab_factory(self, settings: Settings, data: Path) -> ScorerFactory:
        """Per file, fitted on its first rows by `evaluate_file`."""
        if self.peer is not None:
            return self.peer
        if self.skab_base:
            return default_factory(settings, read_skab(data / BASE_FILE))
        return default_factory(settings)

    def tep_factory(self, settings: Settings, base: SkabFile) -> ScorerFactory:
        """Fitted once, on the base file."""
        if self.peer is not None:
            return base_factory(self.peer, settings, base)
        return default_factory(settings, base)


PEERS: tuple[tuple[str, ScorerFactory], ...] = (
    ("PCA T²+Q", PcaT2Q),
    ("dynamic PCA T²+Q (2 lags)", DynamicPca),
    ("Isolation Forest", IsolationForestPeer),
    ("Half-Space Trees", HalfSpaceTreesPeer),
    ("always alarm", AlwaysAlarm),
)


def entries(families: Sequence[str], quick: bool = False) -> list[Entry]:
    """Every family under each threshold method; unless `quick`, the old defaults' plain
    error and SKAB's `--base`; then the peers (PCA T²+Q alone if `quick`)."""
    default = Settings()
    out: list[Entry] = []
    for kind in families:
        for method in METHODS:
            is_default = (kind, method) == (default.model.kind, default.threshold.method)
            name = f"aemon {kind}, {method}" + (" (default)" if is_default else "")
            out.append(Entry(name, {"model": {"kind": kind}, "threshold": {"method": method}}))
    if not quick:
        out.append(Entry("aemon dense, plain MSE (old)", PLAIN_SCORING))
        out.append(Entry(f"aemon {default.model.kind}, --base (SKAB)", {}, skab_base=True))
    out += [Entry(name, {}, peer) for name, peer in PEERS[: 1 if quick else None]]
    return out


def with_update(settings: Settings, update: Update) -> Settings:
    """`settings` with some fields of some sections replaced (the others' fields, and which
    of them were set, as they were)."""
    changed = {
        section: getattr(settings, section).model_copy(update=fields)
        for section, fields in update.items()
    }
    return settings.model_copy(update=changed)


def skab_figures(results: Sequence[FileResult]) -> Figures:
    """All files, then the tuning half and the held-out half apart; rates as fractions."""
    held = [r for r in results if is_held_out(Path(r.name))]
    tuning = [r for r in results if not is_held_out(Path(r.name))]
    out: Figures = {}
    for prefix, part in (("", results), ("tune_", tuning), ("held_", held)):
        s = summarise(part) if part else {}
        for key in ("f1", "far", "mar", "nab_standard"):
            out[f"{prefix}{key}"] = float(s.get(key, math.nan))
    return out


def tep_figures(results: Sequence[FileResult]) -> Figures:
    """`aemon evaluate`'s TEP headline, and every fault's detection rate (`dr_<k>`)."""
    headline = tep_headline(results) or {}
    out: Figures = {
        key: float(headline.get(key, math.nan))
        for key in ("mean_detection_rate", "far_normal_test", "far_fault_files")
    }
    out["faults"] = float(headline.get("faults", 0))
    for r in results:
        match = TEP_FAULT.fullmatch(Path(r.name).name)
        if match:
            out[f"dr_{int(match[1])}"] = r.confusion.recall
    return out


@dataclass(frozen=True)
class Column:
    """A column of a table: `key` of a row's figures, shown in percent or not."""

    title: str
    key: str
    digits: int = 3
    percent: bool = False
    width: int = 5

    def cell(self, figures: Figures) -> str:
        """Blank where the figure is not measured (a published row), "-" where it has no
        value (no file to count it on)."""
        width = max(self.width, len(self.title))
        if self.key not in figures:
            return " " * width
        value = figures[self.key]
        if not math.isfinite(value):
            return f"{'-':>{width}}"
        shown = 100 * value if self.percent else value
        return f"{shown:>{width}.{self.digits}f}"


NAME_WIDTH = 36
SKAB_COLUMNS = (
    Column("F1", "f1"),
    Column("FAR %", "far", 2, True, 6),
    Column("MAR %", "mar", 2, True, 6),
    Column("NAB", "nab_standard", 1),
    Column("held-out F1", "held_f1"),
    Column("FAR %", "held_far", 2, True, 6),
    Column("MAR %", "held_mar", 2, True, 6),
    Column("s", "seconds", 0, width=4),
)
TEP_COLUMNS = (
    Column("mean DR (18)", "mean_detection_rate"),
    Column("FAR % normal-test", "far_normal_test", 2, True),
    Column("FAR % pre-fault", "far_fault_files", 2, True),
    *(Column(f"DR {k}", f"dr_{k}", 2) for k in TEP_HARD),
    Column("s", "seconds", 0, width=4),
)


def header(columns: Sequence[Column]) -> list[str]:
    """The header line and the separator line of a markdown table."""
    cells = [
        f"{'detector':<{NAME_WIDTH}}",
        *(f"{c.title:>{max(c.width, len(c.title))}}" for c in columns),
    ]
    return [
        "| " + " | ".join(cells) + " |",
        "|" + "|".join("-" * (len(c) + 2) for c in cells) + "|",
    ]


def line(name: str, figures: Figures, columns: Sequence[Column]) -> str:
    return "| " + " | ".join([f"{name:<{NAME_WIDTH}}", *(c.cell(figures) for c in columns)]) + " |"


def skab_paths(data: Path) -> list[Path]:
    return sorted((data / "valve1").glob("*.csv"), key=lambda p: int(p.stem))


def tep_paths(data: Path) -> list[Path]:
    faults = sorted(p for p in data.glob("fault*.csv") if TEP_FAULT.fullmatch(p.name))
    normal = data / TEP_NORMAL
    return ([normal] if normal.exists() else []) + faults


def seeded(
    entry: Entry, settings: Settings, seeds: Sequence[int], measure: Callable[[Settings], Figures]
) -> Figures:
    """`measure` of the entry's settings; for aemon's rows, once per model seed, averaged
    (`averaged`). Peers are measured once: their fits do not depend on the model's seed."""
    row_settings = with_update(settings, entry.update)
    if entry.peer is not None:
        return measure(row_settings)
    runs = [measure(with_update(row_settings, {"model": {"seed": s}})) for s in seeds]
    return runs[0] if len(runs) == 1 else averaged(runs)


def averaged(runs: Sequence[Figures]) -> Figures:
    """Each figure's mean over the runs, and each figure's lowest and highest beside it
    (`<key>_min`, `<key>_max`). One seed's figure can sit several points from another's:
    a change is judged by the mean and the range, not by one seed.

    >>> averaged([{"f1": 0.8, "far": 0.1}, {"f1": 0.9, "far": 0.3}])["f1_min"]
    0.8
    >>> round(averaged([{"f1": 0.8, "far": 0.1}, {"f1": 0.9, "far": 0.3}])["far"], 3)
    0.2
    """
    out: Figures = {}
    for key in runs[0]:
        values = [run[key] for run in runs]
        out[key] = float(np.mean(values))
        out[f"{key}_min"], out[f"{key}_max"] = float(np.min(values)), float(np.max(values))
    return out


def with_range(columns: Sequence[Column], key: str, title: str, seeds: int) -> list[Column]:
    """`columns`; when more than one seed is run, with the lowest and highest of `key` over
    them before the time."""
    if seeds < 2:
        return list(columns)
    spread = [Column(f"{title} min", f"{key}_min"), Column(f"{title} max", f"{key}_max")]
    return [*columns[:-1], *spread, columns[-1]]


def run_skab(
    chosen: Sequence[Entry], data: Path, warmup: int, settings: Settings, seeds: Sequence[int]
) -> dict[str, Figures]:
    paths = skab_paths(data)
    held = sum(is_held_out(p) for p in paths)
    print(f"SKAB valve1: {len(paths)} files ({held} held out, odd-numbered), {warmup} rows of")
    print("warm-up per file (a fresh detector fits on them), the rest streamed causally.")
    print(seeds_line(seeds) + "\n")
    columns = with_range(SKAB_COLUMNS, "f1", "F1", len(seeds))
    print("\n".join(header(columns)))
    out: dict[str, Figures] = {}
    for entry in chosen:
        if "skab" not in entry.datasets():
            continue
        started = time.perf_counter()

        def measure(row_settings: Settings, entry: Entry = entry) -> Figures:
            factory = entry.skab_factory(row_settings, data)
            return skab_figures(evaluate_paths(paths, row_settings, warmup, factory))

        figures = seeded(entry, settings, seeds, measure)
        out[entry.name] = figures | {"seconds": time.perf_counter() - started}
        print(line(entry.name, out[entry.name], columns), flush=True)
    for name, (f1, far, mar) in PUBLISHED.items():
        published = {"f1": f1, "far": far, "mar": mar}
        print(line(f"SKAB published: {name}", published, columns))
    return out


def run_tep(
    chosen: Sequence[Entry], data: Path, settings: Settings, seeds: Sequence[int]
) -> dict[str, Figures]:
    paths = tep_paths(data)
    base = read_labelled(data / TEP_BASE, None)
    faults = len(paths) - (paths[0].name == TEP_NORMAL)
    print(
        f"TEP: learnt from {TEP_BASE} only ({len(base.ts)} rows, period "
        f"{settings.window.period:g} s, windows of {settings.window.length}), then "
        f"{TEP_NORMAL} and {faults} fault files"
    )
    print("scored causally from their first row. DR: fault detection rate; mean over the")
    print("faults but 3, 9, 15; pre-fault: rows 0-159 of the fault files.")
    print(seeds_line(seeds) + "\n")
    columns = with_range(TEP_COLUMNS, "mean_detection_rate", "DR", len(seeds))
    print("\n".join(header(columns)))
    out: dict[str, Figures] = {}
    for entry in chosen:
        if "tep" not in entry.datasets():
            continue
        started = time.perf_counter()

        def measure(row_settings: Settings, entry: Entry = entry) -> Figures:
            factory = entry.tep_factory(row_settings, base)
            learnt = base_windows(base, row_settings)
            return tep_figures(evaluate_paths(paths, row_settings, 0, factory, learnt=learnt))

        figures = seeded(entry, settings, seeds, measure)
        out[entry.name] = figures | {"seconds": time.perf_counter() - started}
        print(line(entry.name, out[entry.name], columns), flush=True)
    for name, reference in TEP_REFERENCE.items():
        print(line(f"TEP README: {name}", reference, columns))
    return out


def seeds_line(seeds: Sequence[int]) -> str:
    if len(seeds) < 2:
        return f"aemon's rows: model seed {seeds[0]}."
    listed = ", ".join(map(str, seeds))
    return f"aemon's rows: the mean over model seeds {listed}, with the lowest and highest."


def machine(torch_threads: int) -> dict[str, Any]:
    """The CPU, torch's threads and the load: what the times depend on."""
    import torch

    cpu = "unknown CPU"
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "torch": torch.__version__,
        "torch_threads": torch_threads,
        "python": platform.python_version(),
        "load": _load(),
        "revision": revision(),
    }


def revision() -> str:
    """The commit measured, `+` if the service's code differs from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    try:
        head, changed = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "service")
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+" if changed else "")


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _finite(value: Any) -> Any:
    """The JSON line's values: to 4 decimals, NaN as null (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    return value


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--data-skab", "--data", type=Path, default=DEFAULT_SKAB, help="folder holding valve1/"
    )
    parser.add_argument(
        "--data-tep", type=Path, default=DEFAULT_TEP, help="folder of the TEP files"
    )
    parser.add_argument("--only", choices=DATASETS, help="run one data set only")
    parser.add_argument(
        "--families",
        help=f"comma-separated autoencoder families (default: all, {','.join(family_names())})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="conv (unless --families) and PCA T²+Q only"
    )
    parser.add_argument("--rows", help="run only the rows whose name contains this text")
    parser.add_argument("--warmup", type=int, default=400, help="SKAB rows fitted on per file")
    parser.add_argument(
        "--seeds",
        type=_seeds,
        help="comma-separated model seeds: aemon's rows are averaged over them (default: "
        "the configured seed alone)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure here")
    return parser.parse_args(argv)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated integers: {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed repeats: {text!r}")
    return seeds


def missing_data(datasets: Sequence[str], args: argparse.Namespace) -> str | None:
    if "skab" in datasets and not skab_paths(args.data_skab):
        return f"no valve1/*.csv under {args.data_skab} (--data-skab, SKAB_DIR)"
    if "tep" in datasets and not (args.data_tep / TEP_BASE).exists():
        return f"no {TEP_BASE} under {args.data_tep} (--data-tep, TEP_DIR)"
    if "tep" in datasets and not tep_paths(args.data_tep):
        return f"no {TEP_NORMAL} or fault*.csv under {args.data_tep}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    families = (
        args.families.split(",") if args.families else (["conv"] if args.quick else family_names())
    )
    unknown = sorted(set(families) - set(family_names()))
    if unknown:
        print(f"unknown families {unknown}; choose among {family_names()}", file=sys.stderr)
        return 2
    datasets = (args.only,) if args.only else DATASETS
    problem = missing_data(datasets, args)
    if problem:
        print(f"{problem}; --only picks one data set", file=sys.stderr)
        return 2
    chosen = [e for e in entries(families, args.quick) if not args.rows or args.rows in e.name]
    configure_logging("warning")
    skab_settings, tep_settings = Settings(), load_settings(TEP_CONFIG)
    # As the daemon does, and `aemon evaluate` (default_factory): one thread per core makes
    # these small fits far slower.
    from service.scoring.runtime import configure_torch

    configure_torch(skab_settings.model.torch_threads)
    host = machine(skab_settings.model.torch_threads)
    print(
        f"machine: {host['cpus']} CPUs ({host['cpu']}), torch {host['torch']} with "
        f"{host['torch_threads']} thread(s), Python {host['python']}, load "
        f"{' '.join(map(str, host['load']))}; aemon at {host['revision']} (+: service/ "
        "differs from it)\n"
    )
    started = time.perf_counter()
    seeds = args.seeds or [skab_settings.model.seed]
    report: dict[str, Any] = {"machine": host, "seeds": seeds}
    if "skab" in datasets:
        report["skab"] = run_skab(chosen, args.data_skab, args.warmup, skab_settings, seeds)
        print()
    if "tep" in datasets:
        report["tep"] = run_tep(chosen, args.data_tep, tep_settings, seeds)
        print()
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["load_after"] = _load()
    print(
        f"took {report['seconds']:.0f} s ({report['seconds'] / 60:.1f} min), load after "
        f"{' '.join(map(str, report['load_after']))}"
    )
    report = _finite(report)
    print(json.dumps(report, ensure_ascii=False))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

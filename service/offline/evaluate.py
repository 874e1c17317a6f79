"""`aemon evaluate`: replays labelled CSV files through `window -> detector -> alert`.

Three formats (`service.offline.readers`): SKAB (`;`-separated, `datetime`, sensor columns,
`anomaly`, `changepoint`), NAB (`timestamp,value`, labelled by a windows JSON such as
NAB's `combined_windows.json`) and the simple `ts,<sensor>...[,anomaly]` that `aemon train`
reads (the Tennessee Eastman files).

Per file, a fresh detector is fitted on the windows of the first `warmup` rows (assumed
normal, as SKAB's leaderboard does); with `--base` it starts from one pre-trained on the
base file, and with `warmup` 0 that one scores every row of every file unchanged (TEP's
protocol: learn from normal training data only). The rest is streamed causally through
the daemon's own `MachineRuntime` (windower and alert tracker) with the file's own
timestamps; rows the windower refuses (a repeated time, or one too far behind) are skipped
and counted. Unless the config sets `window.period`, each file is cut at its own period
(`file_settings`). A test row is predicted anomalous while the alert is firing after the
last window that ends at or before the row, so rows in a sampling gap keep the current
alert state.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import structlog

from service.core.config import Settings, ThresholdSettings
from service.core.types import AlertState, FloatArray, Row, Score, Window
from service.offline.readers import (
    BoolArray,
    NabWindows,
    SkabFile,
    TimeArray,
    read_labelled,
    read_nab_windows,
)
from service.offline.report import build_report, format_report, progress
from service.offline.results import FileResult
from service.offline.scoring_metrics import (
    NAB_WINDOW_S,
    Confusion,
    add_tallies,
    empty_tally,
    nab_normalise,
    nab_tally,
    predicted_changepoints,
)
from service.stream.learning import TuneRequest
from service.stream.machines import MachineRuntime

if TYPE_CHECKING:
    from service.scoring.detector import Detector

log = structlog.get_logger(__name__)


class Scorer(Protocol):
    """What evaluation needs of a detector; `service.scoring.detector.Detector` is one."""

    threshold: float
    version: int

    def fit(self, windows: FloatArray, threshold: ThresholdSettings) -> object: ...

    def score_many(self, windows: FloatArray) -> tuple[FloatArray, FloatArray]: ...


ScorerFactory = Callable[[tuple[str, ...]], Scorer]
# A re-baselining request to the promoted detector, or None: the gate refused it.
Rebaseline = Callable[[TuneRequest], "Detector | None"]


def default_factory(settings: Settings, base: SkabFile | None = None) -> ScorerFactory:
    """Fresh detectors of `settings.model`; with `base`, each starts from one pre-trained
    on the base file's windows (its sensors must match) and is then fitted per file."""
    # torch is imported only when a model is needed
    from service.scoring.detector import Detector
    from service.scoring.runtime import configure_torch

    # As the daemon does: torch's default of one thread per core makes these small fits
    # 20x slower on a 2-core box through thread contention.
    configure_torch(settings.model.torch_threads)
    length = settings.window.length
    if base is None:
        return lambda sensors: Detector.new(sensors, length, settings.model)
    pretrained = Detector.new(base.sensors, length, settings.model)
    learnt = base_windows(base, settings)
    if len(learnt) < 4:
        raise ValueError(f"{base.name}: only {len(learnt)} windows in the base file")
    pretrained.fit(np.stack(learnt), settings.threshold)
    log.info("base_fitted", file=base.name, windows=len(learnt))

    def from_base(sensors: tuple[str, ...]) -> Scorer:
        if sensors != pretrained.sensors:
            raise ValueError(f"base sensors {pretrained.sensors} differ from {sensors}")
        return pretrained.clone()

    return from_base


def base_windows(base: SkabFile, settings: Settings) -> list[FloatArray]:
    """The windows of the whole `--base` file, cut at its own period."""
    return [w.values for w in replay(base, file_settings(settings, base.ts), len(base.ts)).before]


@dataclass(frozen=True)
class Replay:
    """A file streamed through the daemon's windower."""

    before: list[Window]  # emitted while the first `warmup` rows were read
    after: list[Window]
    runtime: MachineRuntime
    taken: BoolArray  # rows taken onto the grid (not refused as duplicate or late)
    skipped: dict[str, int]  # rows refused, by reason


def replay(data: SkabFile, settings: Settings, warmup: int) -> Replay:
    """Streams the rows, in the file's order, through the daemon's windower. A row whose
    every value the windower refuses (its time repeated, or behind the grid's last step
    by more than `window.lateness`) is skipped and counted by reason; empty cells are no
    readings."""
    runtime = MachineRuntime(Path(data.name).stem, settings, data.sensors, None)
    before: list[Window] = []
    after: list[Window] = []
    taken = np.ones(len(data.ts), dtype=np.bool_)
    skipped: dict[str, int] = {}
    finite = np.isfinite(data.values)
    for i, (t, row, ok) in enumerate(zip(data.ts, data.values, finite, strict=True)):
        values = {s: float(v) for s, v, f in zip(data.sensors, row, ok, strict=True) if f}
        rejections = runtime.add_rows([Row(float(t), values)]) if values else []
        if rejections and len(rejections) == len(values):
            taken[i] = False
            reason = rejections[0].reason.value
            skipped[reason] = skipped.get(reason, 0) + 1
        elif rejections:
            log.warning("readings_rejected", file=data.name, row=i, readings=len(rejections))
        (before if i < warmup else after).extend(runtime.advance())
    return Replay(before, after, runtime, taken, skipped)


def inferred_period(ts: TimeArray) -> float | None:
    """The median of the positive steps between consecutive rows; None without any.

    >>> inferred_period(np.array([0.0, 300.0, 600.0, 600.0, 1200.0, 1500.0]))
    300.0
    """
    steps = np.diff(ts)
    steps = steps[steps > 0]
    return float(np.median(steps)) if len(steps) else None


def file_settings(settings: Settings, ts: TimeArray) -> Settings:
    """`settings` for one file: unless the config sets `window.period`, the grid takes
    the file's own period (`inferred_period`), and `max_stale` and `lateness`, unless
    set, keep the same number of periods as the defaults."""
    window = settings.window
    period = inferred_period(ts)
    if "period" in window.model_fields_set or period is None or period == window.period:
        return settings
    scale = period / window.period
    update: dict[str, float] = {"period": period}
    for name in ("max_stale", "lateness"):
        if name not in window.model_fields_set:
            update[name] = getattr(window, name) * scale
    return settings.model_copy(update={"window": window.model_copy(update=update)})


def evaluate_file(
    data: SkabFile,
    settings: Settings,
    warmup: int,
    factory: ScorerFactory,
    learnt: Sequence[FloatArray] = (),
) -> FileResult:
    """Fits the factory's scorer on the windows of the first `warmup` rows (with 0 it is
    used as the factory gives it: fitted already, e.g. on `--base`, from the windows
    `learnt`), then replays the rest of the file through it and the alert tracker, with
    the new-normal rule for aemon's own detectors."""
    started = time.perf_counter()
    if warmup < 0:
        raise ValueError(f"warmup must not be negative, got {warmup}")
    if len(data.ts) <= warmup:
        raise ValueError(f"{data.name}: {len(data.ts)} rows, not more than warmup {warmup}")
    settings = file_settings(settings, data.ts)
    streamed = replay(data, settings, warmup)
    detector = factory(data.sensors)
    if warmup > 0:
        if len(streamed.before) < 4:
            raise ValueError(
                f"{data.name}: only {len(streamed.before)} windows in the first {warmup} rows"
            )
        detector.fit(_stack(streamed.before), settings.threshold)
        learnt = [w.values for w in streamed.before]
    runtime = streamed.runtime
    rebaseline = _rebaseliner(runtime, detector, settings, learnt)
    end_ts, firing, scores = _track(runtime, detector, streamed.after, rebaseline)
    test = streamed.taken & (np.arange(len(data.ts)) >= warmup)
    # In time order: rows the windower took out of order (within its lateness) were sorted.
    rows = np.flatnonzero(test)[np.argsort(data.ts[test], kind="stable")]
    test_ts = data.ts[rows]
    # The alert state after the last window ending at or before each row (none yet: normal).
    last = np.searchsorted(end_ts, test_ts, side="right") - 1
    predicted = np.where(last >= 0, firing[np.maximum(last, 0)], False)
    log.info(
        "file_evaluated",
        file=data.name,
        period=settings.window.period,
        train_windows=len(streamed.before),
        test_windows=len(streamed.after),
        threshold=detector.threshold,
        gaps=runtime.windower.gaps if runtime.windower else 0,
        skipped=streamed.skipped,
    )
    return FileResult(
        data.name,
        test_ts,
        data.anomaly[rows],
        predicted.astype(bool),
        [float(t) for t in test_ts[data.changepoint[rows]]],
        detector.threshold,
        data.sensors,
        data.values[rows],
        end_ts,
        scores,
        dict(streamed.skipped),
        time.perf_counter() - started,
    )


def _track(
    runtime: MachineRuntime,
    detector: Scorer,
    windows: list[Window],
    rebaseline: Rebaseline | None = None,
) -> tuple[TimeArray, BoolArray, FloatArray]:
    """Scores the windows and feeds them in order to the alert tracker, as the pipeline
    does. With `rebaseline`, a firing alert whose windows settle re-baselines the model
    as the daemon would (`finetune.new_normal_after`, through the same gate), and the
    windows after it are scored by the promoted model; fine-tunes by the interval are not
    replayed, so otherwise the model does not change."""
    firing = np.zeros(len(windows), dtype=np.bool_)
    scored = np.zeros(len(windows), dtype=np.float32)
    start = 0
    while start < len(windows):
        part = windows[start:]
        scores, errors = detector.score_many(_stack(part))
        scored[start:] = scores
        restart = len(windows)
        for i, (window, score, sensor_errors) in enumerate(
            zip(part, scores, errors, strict=True), start
        ):
            runtime.tracker.observe(
                Score(
                    runtime.name,
                    window.end_ts,
                    float(score),
                    detector.threshold,
                    tuple(float(e) for e in sensor_errors),
                    window.sensors,
                    detector.version,
                )
            )
            if rebaseline is not None:
                promoted = _follow_new_normal(runtime, window, float(score), rebaseline)
                if promoted is not None:
                    detector, restart = promoted, i + 1
            firing[i] = runtime.tracker.state == AlertState.FIRING
            if restart <= i + 1:
                break
        start = restart
    end_ts = np.array([w.end_ts for w in windows], dtype=np.float64)
    return end_ts, firing, scored


def _follow_new_normal(
    runtime: MachineRuntime, window: Window, score: float, rebaseline: Rebaseline
) -> Scorer | None:
    """The daemon's training buffer and new-normal rule for one scored window; the
    promoted model when a re-baselining passed the gate."""
    assert runtime.detector is not None
    threshold = runtime.detector.threshold
    runtime.buffer.observe(window.values, score, threshold, runtime.alert_active)
    runtime.settled(window)
    request = runtime.new_normal_job()
    if request is None:
        return None
    promoted = rebaseline(request)
    runtime.tuned(promoted)
    log.info("new_normal", machine=runtime.name, at=window.end_ts, promoted=promoted is not None)
    return promoted


def _rebaseliner(
    runtime: MachineRuntime, scorer: Scorer, settings: Settings, learnt: Sequence[FloatArray]
) -> Rebaseline | None:
    """For aemon's own detectors, when the new-normal rule is on: the fine-tuner's gated
    re-baselining, run in line; the runtime then follows the detector as the daemon's
    does, its training buffer seeded with the learning windows."""
    from service.scoring.detector import Detector

    f = settings.finetune
    if not (isinstance(scorer, Detector) and f.enabled and f.new_normal_after):
        return None
    from service.learning.finetune import TuneJob, tune

    runtime.detector = scorer
    runtime.buffer.seed(list(learnt))
    return lambda request: tune(settings, TuneJob.of(request)).detector


def _stack(windows: Sequence[Window]) -> FloatArray:
    return np.stack([w.values for w in windows])


def summarise(results: Sequence[FileResult]) -> dict[str, float | int]:
    """SKAB's figures over the pooled test rows of all files."""
    total = Confusion()
    tally = empty_tally()
    for r in results:
        total = total + r.confusion
        detections = predicted_changepoints(r.ts, r.predicted)
        tally = add_tallies(tally, nab_tally(r.changepoints, detections, NAB_WINDOW_S))
    nab = nab_normalise(tally)
    return {
        "f1": total.f1,
        "precision": total.precision,
        "recall": total.recall,
        "far": total.far,
        "mar": total.mar,
        "nab_standard": nab["standard"],
        "nab_low_fp": nab["low_fp"],
        "nab_low_fn": nab["low_fn"],
        "files": len(results),
        "rows": total.tp + total.fp + total.tn + total.fn,
    }


def evaluate_paths(
    paths: Sequence[Path],
    settings: Settings,
    warmup: int,
    factory: ScorerFactory,
    on_file: Callable[[FileResult], None] | None = None,
    labels: NabWindows | None = None,
    learnt: Sequence[FloatArray] = (),
) -> list[FileResult]:
    """Each file by `evaluate_file`; `learnt`: the windows a `--base` scorer learnt."""
    results = []
    for path in paths:
        result = evaluate_file(read_labelled(path, labels), settings, warmup, factory, learnt)
        results.append(result)
        if on_file is not None:
            on_file(result)
    return results


def run_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    """The `aemon evaluate` command: prints the figures (tables, or JSON with `--json`)."""
    if args.model:
        settings = settings.model_copy(
            update={"model": settings.model.model_copy(update={"kind": args.model})}
        )
    if args.warmup < 0 or (args.warmup == 0 and args.base is None):
        print(
            "aemon: evaluate: --warmup must be positive, or 0 with --base (learn from the "
            "base file only)",
            file=sys.stderr,
        )
        return 2
    try:
        labels = read_nab_windows(args.labels) if args.labels else None
        base = read_labelled(args.base, labels) if args.base else None
        factory = default_factory(settings, base)
        learnt = base_windows(base, settings) if base else []
        with progress(len(args.csv)) as on_file:
            results = evaluate_paths(
                args.csv, settings, args.warmup, factory, on_file, labels, learnt
            )
        if args.plot:
            from service.offline.evaluate_plot import plot_results

            plot_results(results, args.plot)
    except (OSError, ValueError, ImportError) as exc:
        print(f"aemon: evaluate: {exc}", file=sys.stderr)
        return 2
    report = build_report(summarise(results), results)
    print(json.dumps(report) if args.json else format_report(report))
    return 0

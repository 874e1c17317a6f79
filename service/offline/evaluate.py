"""`aemon evaluate`: replays labelled CSV files through `window -> detector -> alert`.

Two formats (`service.offline.readers`): SKAB (`;`-separated, `datetime`, sensor columns,
`anomaly`, `changepoint`) and NAB (`timestamp,value`, labelled by a windows JSON such as
NAB's `combined_windows.json`).

Per file, a fresh detector is fitted on the windows of the first `warmup` rows (assumed
normal, as SKAB's leaderboard does); the rest is streamed causally through the daemon's own
`MachineRuntime` (windower and alert tracker) with the file's own timestamps. A test row is
predicted anomalous while the alert is firing after the last window that ends at or before
the row, so rows in a sampling gap keep the current alert state.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np
import structlog

from service.core.config import Settings, ThresholdSettings
from service.core.types import AlertState, FloatArray, Reading, Score, Window
from service.offline.readers import (
    BoolArray,
    NabWindows,
    SkabFile,
    TimeArray,
    read_labelled,
    read_nab_windows,
)
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
from service.stream.machines import MachineRuntime

log = structlog.get_logger(__name__)


class Scorer(Protocol):
    """What evaluation needs of a detector; `service.scoring.detector.Detector` is one."""

    threshold: float
    version: int

    def fit(self, windows: FloatArray, threshold: ThresholdSettings) -> object: ...

    def score_many(self, windows: FloatArray) -> tuple[FloatArray, FloatArray]: ...


ScorerFactory = Callable[[tuple[str, ...]], Scorer]


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
    base_windows = windows_of(base, settings, len(base.ts))[0]
    pretrained.fit(_stack(base_windows), settings.threshold)
    log.info("base_fitted", file=base.name, windows=len(base_windows))

    def from_base(sensors: tuple[str, ...]) -> Scorer:
        if sensors != pretrained.sensors:
            raise ValueError(f"base sensors {pretrained.sensors} differ from {sensors}")
        return pretrained.clone()

    return from_base


def windows_of(
    data: SkabFile, settings: Settings, warmup: int
) -> tuple[list[Window], list[Window], MachineRuntime]:
    """Streams the rows through the daemon's windower: `(windows emitted while the first
    `warmup` rows were read, windows emitted after, the runtime)`."""
    runtime = MachineRuntime(Path(data.name).stem, settings, data.sensors, None)
    before: list[Window] = []
    after: list[Window] = []
    for i, (t, row) in enumerate(zip(data.ts, data.values, strict=True)):
        for sensor, value in zip(data.sensors, row, strict=True):
            rejection = runtime.add(Reading(runtime.name, sensor, float(t), float(value)))
            if rejection is not None:
                log.warning("reading_rejected", file=data.name, reason=rejection.reason.value)
        (before if i < warmup else after).extend(runtime.advance())
    return before, after, runtime


def evaluate_file(
    data: SkabFile, settings: Settings, warmup: int, factory: ScorerFactory
) -> FileResult:
    if len(data.ts) <= warmup:
        raise ValueError(f"{data.name}: {len(data.ts)} rows, not more than warmup {warmup}")
    train, test, runtime = windows_of(data, settings, warmup)
    if len(train) < 4:
        raise ValueError(f"{data.name}: only {len(train)} windows in the first {warmup} rows")
    detector = factory(data.sensors)
    detector.fit(_stack(train), settings.threshold)
    end_ts, firing, scores = _track(runtime, detector, test)
    test_ts = data.ts[warmup:]
    # The alert state after the last window ending at or before each row (none yet: normal).
    last = np.searchsorted(end_ts, test_ts, side="right") - 1
    predicted = np.where(last >= 0, firing[np.maximum(last, 0)], False)
    log.info(
        "file_evaluated",
        file=data.name,
        train_windows=len(train),
        test_windows=len(test),
        threshold=detector.threshold,
        gaps=runtime.windower.gaps if runtime.windower else 0,
    )
    return FileResult(
        data.name,
        test_ts,
        data.anomaly[warmup:],
        predicted.astype(bool),
        [float(t) for t in test_ts[data.changepoint[warmup:]]],
        detector.threshold,
        data.sensors,
        data.values[warmup:],
        end_ts,
        scores,
    )


def _track(
    runtime: MachineRuntime, detector: Scorer, windows: list[Window]
) -> tuple[TimeArray, BoolArray, FloatArray]:
    """Scores the windows in one batch (the model does not change during a replay) and
    feeds them in order to the alert tracker, as the pipeline does."""
    if not windows:
        return np.zeros(0, np.float64), np.zeros(0, dtype=np.bool_), np.zeros(0, np.float32)
    scores, errors = detector.score_many(_stack(windows))
    firing = np.zeros(len(windows), dtype=np.bool_)
    for i, (window, score, sensor_errors) in enumerate(zip(windows, scores, errors, strict=True)):
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
        firing[i] = runtime.tracker.state == AlertState.FIRING
    end_ts = np.array([w.end_ts for w in windows], dtype=np.float64)
    return end_ts, firing, np.asarray(scores, dtype=np.float32)


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
) -> list[FileResult]:
    results = []
    for path in paths:
        result = evaluate_file(read_labelled(path, labels), settings, warmup, factory)
        results.append(result)
        if on_file is not None:
            on_file(result)
    return results


def run_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    """The `aemon evaluate` command: prints the summary (a table, or JSON with `--json`)."""
    if args.model:
        settings = settings.model_copy(
            update={"model": settings.model.model_copy(update={"kind": args.model})}
        )
    try:
        labels = read_nab_windows(args.labels) if args.labels else None
        base = read_labelled(args.base, labels) if args.base else None
        factory = default_factory(settings, base)
        with _progress(len(args.csv)) as advance:
            results = evaluate_paths(args.csv, settings, args.warmup, factory, advance, labels)
        if args.plot:
            from service.offline.evaluate_plot import plot_results

            plot_results(results, args.plot)
    except (OSError, ValueError, ImportError) as exc:
        print(f"aemon: evaluate: {exc}", file=sys.stderr)
        return 2
    summary = summarise(results)
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>13}  {value:.4f}" if isinstance(value, float) else f"{key:>13}  {value}")
    return 0


@contextmanager
def _progress(total: int) -> Iterator[Callable[[FileResult], None]]:
    """A rich progress bar on a terminal; silent otherwise (pipes, --json into files)."""
    if not sys.stdout.isatty():
        yield lambda _result: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task("evaluating", total=total)
        yield lambda _result: progress.advance(task)

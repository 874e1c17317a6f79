"""`aemon train`: fits machines' models offline from history, into the state directory.

A new machine then needs no learning period: a daemon started on the same state directory
loads the version written here and scores at once. Every file is streamed through the
daemon's own windower (`MachineRuntime`), the model is fitted as the fine-tuner fits a
learning machine's (`fit_new`), and written as the machine's next version by `ModelStore`,
with `reason = "train"`. Windows that a row labelled anomalous (or held on from one, up to
`window.max_stale`) reaches are left out.

The CSV formats (SKAB's, and a simple one of `ts` and sensor columns) are read by
`service.offline.readers.read_history`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from service.core.config import Settings
from service.core.types import FloatArray, Reading
from service.learning.finetune import fit_new
from service.learning.store import ModelStore
from service.learning.store_meta import TrainingFacts
from service.offline.readers import History, read_history
from service.stream.machines import MachineRuntime

log = structlog.get_logger(__name__)

# Progress of one machine's fit: (epochs done, epochs in all).
Progress = Callable[[int, int], None]


class TrainError(ValueError):
    """The history cannot train a model; the message says why."""


@dataclass(frozen=True)
class TrainResult:
    machine: str
    version: int
    windows: int
    holdout: int
    excluded: int
    final_loss: float
    threshold: float


def machine_sensors(
    machine: str, histories: Sequence[History], settings: Settings
) -> tuple[str, ...]:
    """The model's sensor order: the config's for a declared machine, else sorted, as the
    daemon's discovery fixes it. Every file must hold them all."""
    declared = settings.machines.get(machine)
    sensors = declared.sensors if declared else tuple(sorted(histories[0].sensors))
    for history in histories:
        missing = set(sensors) - set(history.sensors)
        if missing or (declared is None and set(history.sensors) != set(sensors)):
            raise TrainError(
                f"{history.path}: sensors {sorted(history.sensors)} differ from "
                f"{machine}'s {sorted(sensors)}"
            )
    return sensors


def normal_windows(
    machine: str, history: History, sensors: tuple[str, ...], settings: Settings
) -> tuple[list[FloatArray], int]:
    """The windows the daemon would cut from `history` that no anomalous row reaches, and
    how many were left out."""
    declared = settings.machines.get(machine)
    runtime = MachineRuntime(machine, settings, sensors, declared.period if declared else None)
    columns = [history.sensors.index(s) for s in sensors]
    span = (settings.window.length - 1) * runtime.period + settings.window.max_stale
    bad_ts = np.sort(history.ts[history.anomalous])  # rows may be out of order
    kept: list[FloatArray] = []
    excluded = rejected = 0
    for t, row in zip(history.ts, history.values[:, columns], strict=True):
        for sensor, value in zip(sensors, row, strict=True):
            if math.isfinite(value):
                rejected += (
                    runtime.add(Reading(machine, sensor, float(t), float(value))) is not None
                )
        for window in runtime.advance():
            first_bad = np.searchsorted(bad_ts, window.end_ts - span)
            if first_bad < len(bad_ts) and bad_ts[first_bad] <= window.end_ts:
                excluded += 1
            else:
                kept.append(window.values)
    if rejected:
        log.warning("history_readings_rejected", file=str(history.path), readings=rejected)
    return kept, excluded


def train_machine(
    machine: str,
    histories: Sequence[History],
    settings: Settings,
    max_windows: int,
    on_epoch: Progress | None = None,
) -> TrainResult:
    """Fits `machine`'s model on the normal windows of its files (in the order given) and
    saves it as its next version."""
    sensors = machine_sensors(machine, histories, settings)
    windows: list[FloatArray] = []
    excluded = 0
    for history in histories:
        kept, left_out = normal_windows(machine, history, sensors, settings)
        windows += kept
        excluded += left_out
    needed = settings.learning.windows
    if len(windows) < needed:
        raise TrainError(
            f"{machine}: {len(windows)} normal windows, fewer than learning.windows = {needed}"
        )
    stacked = _evenly(np.stack(windows), max_windows)
    detector, report = fit_new(settings, sensors, stacked, on_epoch=on_epoch)
    facts = TrainingFacts(reason="train", windows=len(stacked), final_loss=report.final_loss)
    version = ModelStore(settings.state.dir).save(machine, detector, facts)
    log.info("model_trained", machine=machine, version=version, windows=len(stacked))
    return TrainResult(
        machine,
        version,
        report.windows_train,
        report.windows_holdout,
        excluded,
        report.final_loss,
        report.threshold,
    )


def _evenly(windows: FloatArray, limit: int) -> FloatArray:
    """At most `limit` windows, evenly spread over the history and in time order."""
    if len(windows) <= limit:
        return windows
    chosen: FloatArray = windows[np.linspace(0, len(windows) - 1, limit).round().astype(int)]
    return chosen


def group_by_machine(paths: Sequence[Path], machine: str | None) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for path in paths:
        groups.setdefault(machine or path.stem, []).append(path)
    return groups


def run_train(settings: Settings, args: argparse.Namespace) -> int:
    """The `aemon train` command: one line per machine trained."""
    from service.scoring.runtime import configure_torch

    configure_torch(settings.model.torch_threads)
    groups = group_by_machine(args.csv, args.machine)
    failed = False
    with _progress() as track:
        for machine, paths in groups.items():
            try:
                histories = [read_history(p) for p in paths]
                result = train_machine(
                    machine, histories, settings, args.max_windows, track(machine)
                )
            except (TrainError, OSError, ValueError) as exc:
                print(f"aemon: train: {exc}", file=sys.stderr)
                failed = True
                continue
            print(describe(result), flush=True)
    return 1 if failed else 0


def describe(r: TrainResult) -> str:
    return (
        f"{r.machine}: version {r.version}, {r.windows} windows ({r.holdout} held out to "
        f"calibrate, {r.excluded} left out as anomalous), loss {r.final_loss:.4g}, "
        f"threshold {r.threshold:.4g}"
    )


@contextmanager
def _progress() -> Iterator[Callable[[str], Progress | None]]:
    """A rich bar per machine on a terminal; nothing otherwise (each machine still prints
    its line when done)."""
    if not sys.stdout.isatty():
        yield lambda machine: None
        return
    from rich.progress import Progress as Bars

    with Bars() as bars:

        def track(machine: str) -> Progress:
            task = bars.add_task(machine, total=None)
            return lambda done, total: bars.update(task, completed=done, total=total)

        yield track

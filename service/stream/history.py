"""`MachineHistory`: what the status page shows of a machine's past, filled on the pipeline
thread from what scoring already computed and read by the HTTP threads.

- **scores**: a ring of `HISTORY_POINTS` buckets of `HISTORY_SPAN / HISTORY_POINTS`
  seconds of event time (20 s: the last 4 hours), each the window of highest score in it
  (its score, threshold and each sensor's share of its error, in 255ths: a chart's
  resolution, and no overflow as raw errors of a wild fault would): downsampled, a spike
  is never averaged away. Fixed numpy arrays, written in place: 720 x (16 + sensors)
  bytes a machine.
- **windows**: the latest windows (one every `KEEP_EVERY` of a window's length,
  `RECENT_WINDOWS` of them), copied as the rows they cover (`WindowRing`: kept windows
  overlap by half), and references to those around the last alert (the ones before it,
  then its own up to `ALERT_WINDOWS`; a window's array is never written after it is cut).
  The page reconstructs them on its own thread.
- **events**: the last `EVENTS` alert events, operator commands and fit outcomes: `kind`
  (alert, command, model) and `at`, with the fields of `alert_note`, `command_note` and
  `model_note`. `at` is event time for an alert, wall-clock time for the others.

Every write and every read takes the machine's lock; a read copies what it returns.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.core.types import AlertEvent, FloatArray, Window
from service.scoring.detector import Detector
from service.stream.commands import Command, Outcome
from service.stream.learning import FitResult
from service.stream.training import WindowRing

HISTORY_SPAN = 4 * 3600.0
HISTORY_POINTS = 720
RECENT_WINDOWS = 16
KEEP_EVERY = 0.5  # of a window's length: kept windows overlap by half
ALERT_WINDOWS = 32
ALERT_CONTEXT = 8  # of the latest windows, kept when an alert is raised
SHARE_SCALE = 255  # a share of 1, in the ring's uint8
EVENTS = 100


@dataclass(frozen=True, slots=True)
class Kept:
    """A window kept for the page, with what scoring said of it."""

    end_ts: float
    score: float
    values: FloatArray  # [time, sensors], the window's own array
    alert: bool  # scored while an alert was firing


@dataclass(frozen=True)
class Snapshot:
    """A copy of one machine's history, safe to use off the pipeline thread."""

    sensors: tuple[str, ...]
    period: float
    ts: np.ndarray  # [n] float64, oldest first
    score: FloatArray  # [n]
    threshold: FloatArray  # [n]
    shares: FloatArray  # [n, sensors], each row summing to 1 (or all 0)
    recent: list[Kept]
    around_alert: list[Kept]
    events: list[dict[str, Any]]
    detector: Detector | None = field(default=None)


class MachineHistory:
    def __init__(self, period: float) -> None:
        self.period = period
        self.bucket = HISTORY_SPAN / HISTORY_POINTS
        self._lock = threading.Lock()
        self._sensors: tuple[str, ...] = ()
        self._ts = np.full(HISTORY_POINTS, np.nan)
        # Written whole at once (not np.zeros, whose pages the kernel would hand out as
        # the ring fills): the memory is taken when the machine starts, not over 4 hours.
        self._score = np.full(HISTORY_POINTS, 0.0, np.float32)
        self._threshold = np.full(HISTORY_POINTS, 0.0, np.float32)
        self._shares = np.full((HISTORY_POINTS, 0), 0, np.uint8)
        self._head = -1  # slot of the newest bucket
        self._bucket_of_head = -1
        self._recent = WindowRing(RECENT_WINDOWS, 1)
        self._recent_of: deque[tuple[float, float, bool]] = deque(maxlen=RECENT_WINDOWS)
        self._alert: list[Kept] = []
        self._events: deque[dict[str, Any]] = deque(maxlen=EVENTS)
        self._detector: Detector | None = None

    # -- the pipeline thread --------------------------------------------------------------
    def record(
        self,
        detector: Detector,
        windows: list[Window],
        scores: FloatArray,
        errors: FloatArray,
        firing: list[bool],
    ) -> None:
        """One machine's scored windows of a cycle (in time order), and whether an alert
        fired after each."""
        with self._lock:
            self._detector = detector
            if windows[0].sensors != self._sensors:
                self._restart(windows[0].sensors, len(windows[0].values))
            threshold = detector.threshold
            for window, score, sensor_errors in zip(windows, scores, errors, strict=True):
                self._into_bucket(window.end_ts, float(score), threshold, sensor_errors)
            self._keep(windows, scores, firing)

    def _restart(self, sensors: tuple[str, ...], length: int) -> None:
        self._sensors = sensors
        self._ts[:] = np.nan
        self._shares = np.full((HISTORY_POINTS, len(sensors)), 0, np.uint8)
        self._head = self._bucket_of_head = -1
        # Windows kept exactly `KEEP_EVERY` apart share all rows but this many.
        self._recent = WindowRing(RECENT_WINDOWS, max(1, round(KEEP_EVERY * length)))
        self._recent_of.clear()
        self._alert = []

    def _into_bucket(self, ts: float, score: float, threshold: float, errors: FloatArray) -> None:
        bucket = int(ts // self.bucket)
        if bucket < self._bucket_of_head:
            return  # a backlog scored after newer windows: older than the ring's head
        if bucket > self._bucket_of_head:
            self._head = (self._head + 1) % HISTORY_POINTS
            self._bucket_of_head = bucket
        elif score <= self._score[self._head]:
            return
        h = self._head
        self._ts[h], self._score[h], self._threshold[h] = ts, score, threshold
        # Shares only for the window a bucket keeps: most windows replace no bucket's peak.
        total = float(errors.sum())
        self._shares[h] = np.rint(errors * (SHARE_SCALE / total)) if total > 0 else 0

    def _keep(self, windows: list[Window], scores: FloatArray, firing: list[bool]) -> None:
        spacing = KEEP_EVERY * len(windows[0].values) * self.period
        last = self._recent_of[-1][0] if self._recent_of else -np.inf
        for window, score, alert in zip(windows, scores, firing, strict=True):
            if window.end_ts - last < spacing:
                continue
            last = window.end_ts
            self._recent.append(window.values)
            self._recent_of.append((window.end_ts, float(score), alert))
            if alert and len(self._alert) < ALERT_WINDOWS:
                self._alert.append(Kept(window.end_ts, float(score), window.values, alert))

    def _recent_kept(self, newest: int = RECENT_WINDOWS) -> list[Kept]:
        """The `newest` recent windows, oldest first, each a new array."""
        n = len(self._recent_of)
        kept = []
        for i in range(max(0, n - newest), n):
            end_ts, score, alert = self._recent_of[i]
            kept.append(Kept(end_ts, score, self._recent.window(i), alert))
        return kept

    def alert_raised(self) -> None:
        """A new alert: the windows that led up to it become its context."""
        with self._lock:
            self._alert = self._recent_kept(ALERT_CONTEXT)

    def note(self, event: dict[str, Any]) -> None:
        """An alert event, a command or a model install (`kind`, `at`: wall-clock, ...)."""
        with self._lock:
            self._events.append(event)

    # -- the HTTP threads -----------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        with self._lock:
            order = (np.arange(1, HISTORY_POINTS + 1) + self._head) % HISTORY_POINTS
            filled = order[~np.isnan(self._ts[order])]
            return Snapshot(
                self._sensors,
                self.period,
                self._ts[filled].copy(),
                self._score[filled].copy(),
                self._threshold[filled].copy(),
                self._shares[filled].astype(np.float32) / SHARE_SCALE,
                self._recent_kept(),
                list(self._alert),
                list(self._events),
                self._detector,
            )

    def nbytes(self) -> int:
        """The ring's arrays (windows kept around an alert are references to the
        pipeline's; the recent ones' rows are `recent_nbytes`)."""
        arrays = (self._ts, self._score, self._threshold, self._shares)
        return sum(a.nbytes for a in arrays)

    def recent_nbytes(self) -> int:
        """The rows of the recent windows."""
        return self._recent.nbytes


# -- the events a page lists, from what the pipeline already has --------------------------
def alert_note(event: AlertEvent) -> dict[str, Any]:
    return {
        "kind": "alert",
        "at": event.updated_at,
        "event": event.kind.value,
        "alert_id": event.alert_id,
        "started_at": event.started_at,
        "ended_at": event.ended_at,
        "score": event.score,
        "peak_score": event.peak_score,
        "threshold": event.threshold,
        "top_sensors": [{"sensor": s.sensor, "share": s.share} for s in event.top_sensors],
        "resolution": event.resolution.value if event.resolution else None,
        "acknowledged_by": event.acknowledged_by,
    }


def command_note(command: Command, outcome: Outcome) -> dict[str, Any]:
    return {
        "kind": "command",
        "at": outcome.at,
        "command": command.command,
        "by": command.by,
        "reason": command.reason,
        "ok": outcome.ok,
        "error": outcome.error,
    }


def model_note(result: FitResult, at: float) -> dict[str, Any]:
    detector = result.detector
    return {
        "kind": "model",
        "at": at,
        "outcome": result.outcome.value if result.outcome else None,
        "initial": result.initial,
        "version": detector.version if detector else None,
        "threshold": detector.threshold if detector else None,
    }

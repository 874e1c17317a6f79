"""One machine's life in the pipeline: discovery of its sensors, learning, scoring.

A machine declared in the config starts learning at once. A discovered machine first
collects the sensors it reports for `discovery.period` seconds of event time; its readings
of that time are kept and replayed onto the grid once the sensor set is fixed, so nothing
accepted is lost.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from service.core.config import Settings
from service.core.types import (
    AlertState,
    FloatArray,
    MachineRecord,
    MachineState,
    Reading,
    Rejection,
    RejectReason,
    Resolution,
    Row,
    TuneReason,
    Window,
)
from service.scoring.detector import Detector
from service.scoring.threshold import ScoreDrift
from service.stream.alert import AlertTracker
from service.stream.conditions import Conditions
from service.stream.history import MachineHistory
from service.stream.learning import TuneRequest
from service.stream.settling import Settling
from service.stream.training import TrainingBuffer
from service.stream.window import MachineWindower

# Readings kept while a machine's sensors are being discovered.
MAX_DISCOVERY_READINGS = 100_000


class TooFewWindowsError(Exception):
    """A fine-tune was due, but too few clean windows had come in since the last one."""


@dataclass(frozen=True)
class DriftEvent:
    """ADWIN saw the level of a machine's scores (in units of its threshold) change."""

    level_before: float
    level_after: float
    requested: bool  # an early fine-tune was requested


class MachineRuntime:
    def __init__(
        self,
        name: str,
        settings: Settings,
        sensors: tuple[str, ...] | None,
        period: float | None,
        detector: Detector | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.period = period or settings.window.period
        self.sensors: tuple[str, ...] = ()
        self.windower: MachineWindower | None = None
        self._gaps_counted = 0
        # Its life (discovering, learning, scoring); `shown_state` adds the conditions.
        self.state = MachineState.DISCOVERING
        self.published_state: MachineState | None = None
        self.conditions = Conditions(name, settings, settings.machines.get(name))
        self.detector: Detector | None = None
        self.newest_ts: float | None = None
        self.last_score: float | None = None
        self.scored_until: float | None = None
        self._discovered: list[Reading] = []
        self._discovery_start: float | None = None
        self._learning: list[FloatArray] = []
        self._fitting = False
        self._learning_target: int | None = None  # a relearn's own count of windows
        self.relearning = False
        self._backlog: deque[Window] = deque(maxlen=settings.learning.windows)
        self.backlog_dropped = 0  # windows the backlog had no room for, since the last install
        self.buffer = TrainingBuffer(settings.finetune, settings.model.seed, settings.window.stride)
        self.last_fit_ts: float | None = None
        self.tuning = False
        self.drift: ScoreDrift | None = None
        # Windows an early fine-tune request still waits; None: no request.
        self._drift_wait: int | None = None
        a = settings.alert
        self.tracker = AlertTracker(name, a.k, a.n, a.m, a.top_sensors, a.update_interval)
        f = settings.finetune
        self.settling = Settling(
            f.new_normal_after, f.new_normal_band, f.admit_every, f.recent_windows
        )
        # A settled state waits to be re-baselined on (a request once none is out).
        self.new_normal_due = False
        self._tuning_for: TuneReason | None = None
        self.history = MachineHistory(self.period)
        # How its last fit or fine-tune ended (a FitOutcome's value) and when (wall-clock).
        self.last_fit: str | None = None
        self.last_fit_at: float | None = None
        if detector is not None:
            # A saved model fixes the sensor set: no discovery, no learning after a restart.
            self._fix_sensors(detector.sensors)
            self.install(detector)
        elif sensors is not None:
            self._fix_sensors(sensors)

    @property
    def shown_state(self) -> MachineState:
        """The state as the API, the metrics and the status page show it."""
        return self.conditions.shown or self.state

    @property
    def firing(self) -> bool:
        return self.tracker.state == AlertState.FIRING

    @property
    def alert_active(self) -> bool:
        """Pending or firing: its windows are kept out of fine-tuning."""
        return self.tracker.state in {AlertState.PENDING, AlertState.FIRING}

    def finetune_job(self) -> TuneRequest | None:
        """A fine-tune request when one is due by event time (or requested by a drift) and
        enough clean windows are new; None otherwise. Raises `TooFewWindowsError` when due
        by the interval but the buffer is too thin; a drift request waits for windows."""
        s = self.settings.finetune
        if not s.enabled or self.tuning or self.detector is None or self.scored_until is None:
            return None
        if self.last_fit_ts is None:
            self.last_fit_ts = self.scored_until
        elapsed = self.scored_until - self.last_fit_ts
        enough = self.buffer.new_since_fit >= s.min_windows
        if elapsed >= s.interval:
            reason = TuneReason.INTERVAL
        elif self._drift_due(elapsed) and enough:
            reason = TuneReason.DRIFT
        else:
            return None
        self.last_fit_ts = self.scored_until
        self._drift_wait = None
        if not enough:
            raise TooFewWindowsError(self.buffer.new_since_fit)
        return self._job(reason)

    def _drift_due(self, elapsed: float) -> bool:
        spaced = elapsed >= self.settings.finetune.drift_min_spacing
        return self._drift_wait == 0 and spaced and not self._near_alert

    def settled(self, window: Window) -> bool:
        """Follows a firing alert's windows; True once they have held steady for
        `finetune.new_normal_after` (said once a steady stretch)."""
        f = self.settings.finetune
        if not (f.enabled and f.new_normal_after) or self.detector is None:
            return False
        if not self.firing:
            if self.settling.started_at is not None:  # a stretch was followed: it ended
                self.settling.reset()
                self.new_normal_due = False
            return False
        settled = self.settling.observe(window.end_ts, window.values, self.detector.std)
        self.new_normal_due |= settled
        return settled

    def new_normal_job(self) -> TuneRequest | None:
        """The re-baselining request on the settled windows beside the clean ones, once no
        other fine-tune is out; None meanwhile (asked again at the next scored window)."""
        thin = not self.buffer.kept
        if not self.new_normal_due or self.tuning or self.detector is None or thin:
            return None
        self.new_normal_due = False
        return self._job(TuneReason.NEW_NORMAL, list(self.settling.windows))

    def _job(self, reason: TuneReason, settled: list[FloatArray] | None = None) -> TuneRequest:
        """References only: the learner stacks and clones on its own thread."""
        assert self.detector is not None
        self.buffer.new_since_fit = 0
        self.tuning = True
        self._tuning_for = reason
        train, holdout = self.buffer.split(self.settings.threshold.holdout)
        return TuneRequest(
            self.name,
            self.detector,
            train + (settled or []),
            holdout,
            list(self.buffer.episodes),
            (self.settings.window.length, len(self.sensors)),
            reason,
        )

    def observe_drift(self, score: float) -> DriftEvent | None:
        """Feeds one score to the drift detector; a detected change in the scores' level is
        returned. A rise requests an early fine-tune unless an alert fires or its margin
        runs. The request waits `margin_windows` windows outside any alert, and an alert
        that fires meanwhile drops it: the onset of a fault is not drift to learn."""
        if self.firing:
            self._drift_wait = None
        elif self._drift_wait and not self._near_alert:
            self._drift_wait -= 1
        if self.drift is None:
            return None
        before = self.drift.level
        if not self.drift.update(score):
            return None
        requested = self.drift.level > before and not (self.firing or self.buffer.cooling)
        if requested and self._drift_wait is None:
            self._drift_wait = self.settings.finetune.margin_windows
        return DriftEvent(before, self.drift.level, requested)

    @property
    def _near_alert(self) -> bool:
        return self.alert_active or self.buffer.cooling

    def _watch_drift(self, detector: Detector) -> None:
        """A new model scores on a new scale: its drift is watched afresh."""
        s = self.settings.finetune
        if s.enabled and s.drift_detection and 0 < detector.threshold < float("inf"):
            self.drift = ScoreDrift(scale=detector.threshold, delta=s.drift_delta)

    def add(self, reading: Reading) -> Rejection | None:
        if self.windower is None:
            return self._discover(reading)
        rejection = self.windower.add(reading)
        if rejection is None:
            self.newest_ts = self.windower.newest_ts
        return rejection

    def add_many(self, readings: list[Reading]) -> list[Rejection]:
        """`add` for a run of readings; returns the rejections (the rest were taken)."""
        rejections = []
        start = 0
        # Discovery may fix the sensor set part-way through: the rest go onto the grid.
        while self.windower is None and start < len(readings):
            rejection = self._discover(readings[start])
            if rejection is not None:
                rejections.append(rejection)
            start += 1
        if self.windower is not None and start < len(readings):
            rejections += self.windower.add_many(readings[start:] if start else readings)
        if self.windower is not None and math.isfinite(self.windower.newest_ts):
            self.newest_ts = self.windower.newest_ts
        return rejections

    def add_rows(self, rows: list[Row]) -> list[Rejection]:
        """`add` for every value of every row, in order; returns the rejections."""
        if self.windower is None:
            # Discovery keeps readings: the rows' values one by one, as ingest would give.
            return self.add_many([r for row in rows for r in row.readings(self.name)])
        rejections = self.windower.add_rows(rows)
        if math.isfinite(self.windower.newest_ts):
            self.newest_ts = self.windower.newest_ts
        return rejections

    def advance(self) -> list[Window]:
        if self.windower is None:
            return []
        return self.windower.advance()

    def new_gaps(self) -> int:
        """Gaps that restarted the window since the last call."""
        if self.windower is None:
            return 0
        new, self._gaps_counted = self.windower.gaps - self._gaps_counted, self.windower.gaps
        return new

    def relearn(self, windows: int | None) -> None:
        """Learns again from the next `windows` windows (default `learning.windows`) and
        fits a model from scratch; the current one stops scoring until then."""
        self._learning_target = windows
        self.relearning = True
        self._learning = []
        self._backlog.clear()
        self._fitting = False
        self.detector = None
        self.drift = None
        self.tuning = False
        self.last_fit_ts = None
        self.settling.reset()
        self.new_normal_due = False
        self.state = MachineState.LEARNING

    @property
    def learning_windows(self) -> int:
        return self._learning_target or self.settings.learning.windows

    def collect(self, windows: list[Window]) -> list[FloatArray] | None:
        """Learning: keeps windows as normal; returns the training set once it is complete.
        Windows past it, and those that arrive while the model is being fitted, wait to be
        scored by it: the training set is the first `learning.windows` windows however the
        stream was cut into batches."""
        if self._fitting:
            self._wait_for_model(windows)
            return None
        missing = self.learning_windows - len(self._learning)
        self._learning.extend(w.values for w in windows[:missing])
        if len(self._learning) < self.learning_windows:
            return None
        self._wait_for_model(windows[missing:])
        self._fitting = True
        training, self._learning = self._learning, []
        self.buffer.seed(training)
        return training

    def _wait_for_model(self, windows: list[Window]) -> None:
        """A backlog as long as the training set bounds a plant's memory while its first
        models are fitted one after another; past it the oldest windows go, counted."""
        limit = self.settings.learning.windows
        self.backlog_dropped += max(0, len(self._backlog) + len(windows) - limit)
        self._backlog.extend(windows)

    def tuned(self, detector: Detector | None) -> TuneReason | None:
        """A fine-tune ended: promoted (a new detector) or not (None). Returns why it had
        been requested. Once re-baselined on a new normal, the alert that settled resolves
        as new_normal when windows score clean under the new model (a state it still
        flags keeps it firing)."""
        self.tuning = False
        reason, self._tuning_for = self._tuning_for, None
        if detector is not None:
            self.detector = detector
            self._watch_drift(detector)
            if reason == TuneReason.NEW_NORMAL and self.firing:
                self.tracker.clean_resolution = Resolution.NEW_NORMAL
        return reason

    def install(self, detector: Detector | None) -> list[Window]:
        """Takes a fitted model, or None: the fit failed, learn again. Returns the windows
        that waited for it, to be scored by the model or, with None, learnt from."""
        self._fitting = False
        backlog = list(self._backlog)
        self._backlog.clear()
        self.backlog_dropped = 0
        if detector is None:
            self.state = MachineState.LEARNING
        else:
            self.detector = detector
            self._watch_drift(detector)
            self.state = MachineState.SCORING
            self._learning_target = None
            self.relearning = False
        return backlog

    def describe(self) -> MachineRecord:
        tracker = self.tracker
        return {
            "machine": self.name,
            "state": self.shown_state.value,
            "maintenance_until": self.conditions.maintenance_until,
            "acknowledged_by": tracker.acknowledged_by,
            "sensors": list(self.sensors),
            "alert": tracker.state.value,
            "alert_id": tracker.alert_id,
            "alert_started_at": tracker.started_at,
            "alert_peak": tracker.peak_score if self.firing else None,
            "top_sensors": [{"sensor": s.sensor, "share": s.share} for s in tracker.top_sensors()],
            "acknowledged_at": tracker.acknowledged_at,
            "score": self.last_score,
            "threshold": self.detector.threshold if self.detector else None,
            "model_version": self.detector.version if self.detector else None,
            "learning_windows": len(self._learning),
            "learning_needed": self.learning_windows,
            "fitting": self._fitting,
            "newest_ts": self.newest_ts,
            "scored_until": self.scored_until,
            "last_seen": self.conditions.last_seen,
            "last_fit": self.last_fit,
            "last_fit_at": self.last_fit_at,
        }

    def _discover(self, reading: Reading) -> Rejection | None:
        if len(self._discovered) >= MAX_DISCOVERY_READINGS:
            return Rejection(RejectReason.OVERLOADED, "discovery buffer full", self.name)
        self._discovered.append(reading)
        start = self._discovery_start = self._discovery_start or reading.ts
        if reading.ts - start >= self.settings.discovery.period:
            self._fix_sensors(tuple(sorted({r.sensor for r in self._discovered})))
            self._replay_discovered()
        return None

    def _replay_discovered(self) -> None:
        assert self.windower is not None
        for reading in sorted(self._discovered, key=lambda r: r.ts):
            if self.windower.add(reading) is None:
                self.newest_ts = self.windower.newest_ts
        self._discovered = []

    def _fix_sensors(self, sensors: tuple[str, ...]) -> None:
        w = self.settings.window
        self.sensors = sensors
        self.windower = MachineWindower(
            self.name, sensors, self.period, w.length, w.stride, w.max_stale, w.lateness
        )
        self.state = MachineState.LEARNING

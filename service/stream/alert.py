"""Per-machine alert state machine: `normal -> pending -> firing -> resolved`.

An alert is raised when `k` of the last `n` windows are anomalous, and resolved after `m`
consecutive clean windows. Its id is derived from the machine and start time, so the same
episode replayed twice keeps its id.

>>> t = AlertTracker("pump-7", k=2, n=3, m=2, top_n=1, update_interval=60.0)
>>> def score(ts, value, errors=(1.0, 0.0)):
...     return Score("pump-7", ts, value, 1.0, errors, ("vibration", "current"), 1)
>>> t.observe(score(1, 0.5)) is None, t.state.value
(True, 'normal')
>>> t.observe(score(2, 3.0)) is None, t.state.value
(True, 'pending')
>>> raised = t.observe(score(3, 4.0))
>>> raised.kind.value, raised.state.value, raised.started_at, raised.top_sensors[0].sensor
('raised', 'firing', 2, 'vibration')
>>> t.observe(score(4, 0.5)) is None
True
>>> resolved = t.observe(score(5, 0.5))
>>> resolved.kind.value, resolved.state.value, resolved.ended_at
('resolved', 'resolved', 4)
>>> resolved.alert_id == raised.alert_id
True
>>> t.state.value
'normal'
"""

from __future__ import annotations

import uuid
from collections import deque

import numpy as np

from service.core.types import AlertEvent, AlertKind, AlertState, Resolution, Score, SensorShare

_ID_NAMESPACE = uuid.UUID("6f1c2a64-5b8e-4a8e-9d7e-3c1f0a2b4d5e")


def alert_id(machine: str, started_at: float) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, f"{machine}@{started_at:.3f}"))


class AlertTracker:
    """Follows one machine's scores and says when an alert is raised, updated or resolved."""

    def __init__(
        self, machine: str, k: int, n: int, m: int, top_n: int, update_interval: float
    ) -> None:
        self.machine = machine
        self.k, self.m, self.top_n = k, m, top_n
        self.update_interval = update_interval
        self._recent: deque[Score] = deque(maxlen=n)
        self.state = AlertState.NORMAL
        self._episode_errors: np.ndarray | None = None
        self._started_at = 0.0
        self._last_event_at = 0.0
        self._clean_run: list[Score] = []
        self.peak_score = 0.0
        self._last: Score | None = None  # the newest score of the firing episode
        self.acknowledged_by: str | None = None
        self.acknowledged_at: float | None = None
        self.last_alert_id: str | None = None  # of the latest episode, firing or not
        # What clean windows resolve the firing alert as: new_normal once the model
        # re-baselined on the state it settled in.
        self.clean_resolution = Resolution.CLEAN

    def observe(self, score: Score) -> AlertEvent | None:
        self._recent.append(score)
        if self.state == AlertState.FIRING:
            return self._while_firing(score)
        anomalous = [s for s in self._recent if s.anomalous]
        if len(anomalous) >= self.k:
            return self._raise(anomalous, score)
        self.state = AlertState.PENDING if anomalous else AlertState.NORMAL
        return None

    @property
    def started_at(self) -> float | None:
        """Event time of the firing alert's first anomalous window; None when none fires."""
        return self._started_at if self.state == AlertState.FIRING else None

    def top_sensors(self) -> tuple[SensorShare, ...]:
        """The firing alert's sensors with the largest shares of its error so far."""
        if self.state != AlertState.FIRING or self._last is None:
            return ()
        return self._top_sensors(self._last.sensors)

    @property
    def alert_id(self) -> str | None:
        return alert_id(self.machine, self._started_at) if self.state == AlertState.FIRING else None

    def acknowledge(self, by: str, at: float) -> AlertEvent | None:
        """Marks the firing alert acknowledged (it keeps firing); None when none fires."""
        if self.state != AlertState.FIRING or self._last is None:
            return None
        self.acknowledged_by, self.acknowledged_at = by, at
        return self._event(AlertKind.ACKNOWLEDGED, self._last, AlertState.FIRING, None)

    def resolve(self, resolution: Resolution, ended_at: float) -> AlertEvent | None:
        """Ends the firing alert for `resolution` (not clean windows); forgets a pending
        one. None when none fired."""
        event = None
        if self.state == AlertState.FIRING and self._last is not None:
            event = self._event(
                AlertKind.RESOLVED, self._last, AlertState.RESOLVED, ended_at, resolution
            )
        self._reset()
        return event

    def restore(self, event: AlertEvent) -> None:
        """Takes up a firing alert of before a restart (its last event): the episode goes
        on with its id, so the same fault is not raised twice, and ends as any other."""
        self.state = AlertState.FIRING
        self._started_at = event.started_at
        self.last_alert_id = event.alert_id
        self.peak_score = event.peak_score
        self._last_event_at = event.updated_at
        errors = {s.sensor: s.share for s in event.top_sensors}
        self._episode_errors = np.array([errors.get(n, 0.0) for n in self._sensors(event)])
        self.acknowledged_by, self.acknowledged_at = event.acknowledged_by, event.acknowledged_at
        self._last = Score(
            self.machine,
            event.updated_at,
            event.score,
            event.threshold,
            tuple(float(e) for e in self._episode_errors),
            self._sensors(event),
            event.model_version,
        )

    @staticmethod
    def _sensors(event: AlertEvent) -> tuple[str, ...]:
        return tuple(s.sensor for s in event.top_sensors)

    def _reset(self) -> None:
        self.state = AlertState.NORMAL
        self.clean_resolution = Resolution.CLEAN
        self._recent.clear()
        self._clean_run = []
        self._last = None
        self.acknowledged_by = self.acknowledged_at = None

    def _raise(self, anomalous: list[Score], latest: Score) -> AlertEvent:
        self.state = AlertState.FIRING
        self._started_at = anomalous[0].end_ts
        self.last_alert_id = alert_id(self.machine, self._started_at)
        self._episode_errors = np.zeros(len(latest.sensors))
        self.peak_score = 0.0
        for s in anomalous:
            self._accumulate(s)
        self._last = latest
        self._clean_run = []
        return self._event(AlertKind.RAISED, latest, AlertState.FIRING, None)

    def _while_firing(self, score: Score) -> AlertEvent | None:
        if self._episode_errors is not None and len(self._episode_errors) != len(score.sensors):
            self._episode_errors = np.zeros(len(score.sensors))  # restored with fewer sensors
        self._last = score
        if score.anomalous:
            self._clean_run = []
            self._accumulate(score)
            if score.end_ts - self._last_event_at >= self.update_interval:
                return self._event(AlertKind.UPDATED, score, AlertState.FIRING, None)
            return None
        self._clean_run.append(score)
        if len(self._clean_run) < self.m:
            return None
        ended_at = self._clean_run[0].end_ts
        event = self._event(
            AlertKind.RESOLVED, score, AlertState.RESOLVED, ended_at, self.clean_resolution
        )
        self._reset()
        return event

    def _accumulate(self, score: Score) -> None:
        assert self._episode_errors is not None
        self._episode_errors += np.asarray(score.sensor_errors, dtype=np.float64)
        self.peak_score = max(self.peak_score, score.score)

    def _top_sensors(self, sensors: tuple[str, ...]) -> tuple[SensorShare, ...]:
        assert self._episode_errors is not None
        total = float(self._episode_errors.sum()) or 1.0
        order = np.argsort(-self._episode_errors, kind="stable")[: self.top_n]
        return tuple(
            SensorShare(sensors[i], round(float(self._episode_errors[i]) / total, 4)) for i in order
        )

    def _event(
        self,
        kind: AlertKind,
        score: Score,
        state: AlertState,
        ended_at: float | None,
        resolution: Resolution | None = None,
    ) -> AlertEvent:
        self._last_event_at = score.end_ts
        return AlertEvent(
            kind=kind,
            alert_id=alert_id(self.machine, self._started_at),
            machine=self.machine,
            state=state,
            started_at=self._started_at,
            updated_at=score.end_ts,
            ended_at=ended_at,
            score=score.score,
            peak_score=self.peak_score,
            threshold=score.threshold,
            top_sensors=self._top_sensors(score.sensors),
            model_version=score.model_version,
            resolution=resolution,
            acknowledged_by=self.acknowledged_by,
            acknowledged_at=self.acknowledged_at,
        )

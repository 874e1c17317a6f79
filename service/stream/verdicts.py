"""`Verdicts`: what one machine's scored windows lead to, on the pipeline thread: alert
events, the fine-tuning buffer, drift, gauges, and a fine-tune request when one is due."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from service.core.metrics import Metrics
from service.core.types import (
    AlertEvent,
    AlertKind,
    FitOutcome,
    FloatArray,
    Score,
    TuneReason,
    Window,
)
from service.scoring.detector import Detector
from service.stream.learning import Learner
from service.stream.machines import DriftEvent, MachineRuntime, TooFewWindowsError

log = structlog.get_logger(__name__)

# Requests waiting for the learner beyond which no fine-tune is requested. Machines that
# learned together fall due together; a request holds references to the windows of the
# moment it was made, so a machine still due asks again later with fresher ones instead
# of waiting in a plant-long queue (and the learner's copies are made one at a time).
MAX_QUEUED_JOBS = 4

Emit = Callable[[MachineRuntime, AlertEvent | None], None]


class Verdicts:
    def __init__(self, metrics: Metrics, learner: Learner, emit: Emit) -> None:
        self.metrics = metrics
        self.learner = learner
        self.emit = emit

    def take(
        self,
        runtime: MachineRuntime,
        detector: Detector,
        windows: list[Window],
        scores: FloatArray,
        errors: FloatArray,
    ) -> None:
        """Alerts, fine-tuning buffer and gauges from one machine's scored windows."""
        name = runtime.name
        firing: list[bool] = []
        for window, score, sensor_errors in zip(windows, scores, errors, strict=True):
            result = Score(
                name,
                window.end_ts,
                float(score),
                detector.threshold,
                tuple(sensor_errors.tolist()),
                window.sensors,
                detector.version,
            )
            event = runtime.tracker.observe(result)
            if event is not None:
                if event.kind == AlertKind.RAISED:
                    runtime.history.alert_raised()
                self.emit(runtime, event)
            if runtime.settled(window):
                self._say_settled(runtime)
            firing.append(runtime.firing)
            runtime.buffer.observe(
                window.values, result.score, detector.threshold, runtime.alert_active
            )
            drift = runtime.observe_drift(result.score)
            if drift is not None:
                self._count_drift(runtime, drift, window.end_ts)
        runtime.history.record(detector, windows, scores, errors, firing)
        runtime.last_score = float(scores[-1])
        runtime.scored_until = windows[-1].end_ts
        self.metrics.scored_of[name].inc(len(windows))
        self.metrics.score_of[name].set(runtime.last_score)
        self._count_excluded(runtime)
        self._maybe_finetune(runtime)

    def tuned(self, runtime: MachineRuntime, detector: Detector | None) -> None:
        """A fine-tune's result, installed when promoted (`MachineRuntime.tuned`); a
        re-baselining on a new normal is counted and logged."""
        if runtime.tuned(detector) != TuneReason.NEW_NORMAL:
            return
        outcome = "refused" if detector is None else "promoted"
        self.metrics.new_normals.labels(machine=runtime.name, outcome=outcome).inc()
        alert_id = runtime.tracker.alert_id
        log.info("new_normal", machine=runtime.name, outcome=outcome, alert_id=alert_id)

    def _say_settled(self, runtime: MachineRuntime) -> None:
        settling = runtime.settling
        log.info(
            "new_normal_settled",
            machine=runtime.name,
            alert_id=runtime.tracker.alert_id,
            steady_since=settling.started_at,
            windows=len(settling.windows),
        )

    def _count_drift(self, runtime: MachineRuntime, drift: DriftEvent, ts: float) -> None:
        self.metrics.drift_events.labels(machine=runtime.name).inc()
        log.info(
            "score_drift",
            machine=runtime.name,
            ts=ts,
            level_before=round(drift.level_before, 4),
            level_after=round(drift.level_after, 4),
            finetune_requested=drift.requested,
        )

    def _count_excluded(self, runtime: MachineRuntime) -> None:
        if runtime.buffer.excluded:
            self.metrics.finetune_windows_excluded.labels(machine=runtime.name).inc(
                runtime.buffer.excluded
            )
            runtime.buffer.excluded = 0

    def _maybe_finetune(self, runtime: MachineRuntime) -> None:
        if self.learner.pending() >= MAX_QUEUED_JOBS:
            return  # still due: asked again at its next scored window
        try:
            # A settled alert's re-baselining first: the interval's fine-tune can wait.
            job = runtime.new_normal_job() or runtime.finetune_job()
        except TooFewWindowsError as exc:
            too_few = FitOutcome.TOO_FEW_WINDOWS
            self.metrics.finetune_runs.labels(machine=runtime.name, outcome=too_few).inc()
            runtime.last_fit, runtime.last_fit_at = too_few.value, time.time()
            log.info("finetune_skipped", machine=runtime.name, clean_windows=exc.args[0])
            return
        if job is not None:
            log.info(
                "finetune_submitted",
                machine=runtime.name,
                reason=job.reason,
                windows=len(job.train),
            )
            self.learner.submit(job)

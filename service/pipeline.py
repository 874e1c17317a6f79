"""`Pipeline` thread: queue -> windows -> batched scoring -> alerts -> publish.

The MQTT callback only parses and enqueues; all per-machine state lives on this thread, so
it needs no locks. Results of the fine-tuner arrive through `install` and are taken in at
the start of a cycle.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from service.config import Settings
from service.detector import Detector
from service.finetune import FineTuner
from service.machines import MachineRuntime
from service.metrics import Metrics
from service.publish import Publisher
from service.rejections import RejectionLog
from service.threads import Worker
from service.types import MachineState, Reading, Rejection, RejectReason, Score, Window

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Batch:
    received_at: float
    readings: list[Reading]


class Pipeline(Worker):
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        rejections: RejectionLog,
        publisher: Publisher,
        finetuner: FineTuner,
    ) -> None:
        super().__init__("pipeline", metrics)
        self.rejections = rejections
        self.settings = settings
        self.publisher = publisher
        self.finetuner = finetuner
        self.queue: queue.Queue[Batch] = queue.Queue(maxsize=settings.ingest.queue_size)
        self.machines: dict[str, MachineRuntime] = {}
        self._installs: queue.Queue[tuple[str, Detector | None]] = queue.Queue()
        self._stopping = threading.Event()
        self._drain_until = 0.0
        self._snapshot: list[dict[str, Any]] = []
        self._snapshot_lock = threading.Lock()
        for name, machine in settings.machines.items():
            self._add_machine(name, machine.sensors, machine.period)

    # -- called from other threads ------------------------------------------------------
    def submit(self, batch: Batch) -> bool:
        """Hands readings over; False when the queue is full (the caller counts overloaded)."""
        try:
            self.queue.put_nowait(batch)
        except queue.Full:
            return False
        return True

    def install(self, machine: str, detector: Detector | None) -> None:
        self._installs.put((machine, detector))

    def stop(self, drain_timeout: float) -> None:
        """Finish what is queued (up to `drain_timeout`), then end the thread."""
        self._drain_until = time.monotonic() + drain_timeout
        self._stopping.set()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._snapshot_lock:
            return list(self._snapshot)

    # -- the pipeline thread ------------------------------------------------------------
    def work(self) -> None:
        while not self._stopping.is_set() or self._draining():
            self.cycle(timeout=0.1)
        left = self.queue.qsize()
        if left:
            log.warning("pipeline_stopped_with_queue", messages=left)
        log.info("pipeline_stopped")

    def _draining(self) -> bool:
        return not self.queue.empty() and time.monotonic() < self._drain_until

    def cycle(self, timeout: float) -> None:
        """One round: take in new models, drain the queue, score what is complete."""
        self._take_installs()
        batches = self._drain(timeout)
        windows: dict[str, list[Window]] = defaultdict(list)
        for batch in batches:
            for reading in batch.readings:
                self._route(reading, windows)
        for runtime in self.machines.values():
            windows[runtime.name].extend(runtime.advance())
        self._score(windows)
        if batches:
            self.metrics.pipeline_lag.observe(time.time() - batches[0].received_at)
        self.metrics.queue_depth.set(self.queue.qsize())
        self._publish_snapshot()

    def _drain(self, timeout: float) -> list[Batch]:
        try:
            batches = [self.queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        limit = self.settings.pipeline.max_batch
        while len(batches) < limit:
            try:
                batches.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return batches

    def _route(self, reading: Reading, windows: dict[str, list[Window]]) -> None:
        runtime = self.machines.get(reading.machine)
        if runtime is None:
            if len(self.machines) >= self.settings.ingest.max_machines:
                self._count_rejection(Rejection(RejectReason.UNKNOWN_TOPIC, "machine limit"))
                return
            runtime = self._add_machine(reading.machine, None, None)
        rejection = runtime.add(reading)
        if rejection is not None:
            self._count_rejection(rejection)
        else:
            self.metrics.readings_accepted.labels(machine=runtime.name).inc()

    def _count_rejection(self, rejection: Rejection) -> None:
        self.rejections.record(rejection, rejection.machine)

    def _add_machine(
        self, name: str, sensors: tuple[str, ...] | None, period: float | None
    ) -> MachineRuntime:
        runtime = MachineRuntime(name, self.settings, sensors, period)
        self.machines[name] = runtime
        log.info("machine_added", machine=name, sensors=sensors, state=runtime.state.value)
        return runtime

    def _take_installs(self) -> None:
        while not self._installs.empty():
            machine, detector = self._installs.get_nowait()
            runtime = self.machines[machine]
            backlog = runtime.install(detector)
            if detector is not None:
                self.metrics.model_version.labels(machine=machine).set(detector.version)
                self.metrics.anomaly_threshold.labels(machine=machine).set(detector.threshold)
                self._score({machine: backlog})

    def _score(self, windows: dict[str, list[Window]]) -> None:
        for name, machine_windows in windows.items():
            if not machine_windows:
                continue
            runtime = self.machines[name]
            if runtime.state == MachineState.LEARNING:
                self._learn(runtime, machine_windows)
            elif runtime.detector is not None:
                self._score_machine(runtime, runtime.detector, machine_windows)

    def _learn(self, runtime: MachineRuntime, windows: list[Window]) -> None:
        job = runtime.collect(windows)
        if job is not None:
            log.info("machine_learning_complete", machine=runtime.name, windows=len(job))
            self.finetuner.submit_initial_fit(runtime.name, runtime.sensors, job)

    def _score_machine(
        self, runtime: MachineRuntime, detector: Detector, windows: list[Window]
    ) -> None:
        started = time.perf_counter()
        scores, errors = detector.score_many(np.stack([w.values for w in windows]))
        self.metrics.scoring_latency.observe(time.perf_counter() - started)
        name = runtime.name
        for window, score, sensor_errors in zip(windows, scores, errors, strict=True):
            result = Score(
                name,
                window.end_ts,
                float(score),
                detector.threshold,
                tuple(float(e) for e in sensor_errors),
                window.sensors,
                detector.version,
            )
            event = runtime.tracker.observe(result)
            if event is not None:
                self.publisher.publish_alert(event)
                if event.kind == "raised":
                    self.metrics.alerts_raised.labels(machine=name).inc()
        runtime.last_score = float(scores[-1])
        runtime.scored_until = windows[-1].end_ts
        self.metrics.windows_scored.labels(machine=name).inc(len(windows))
        self.metrics.anomaly_score.labels(machine=name).set(runtime.last_score)
        self.metrics.alert_firing.labels(machine=name).set(runtime.firing)

    def _publish_snapshot(self) -> None:
        snapshot = [runtime.describe() for runtime in self.machines.values()]
        for runtime in self.machines.values():
            if runtime.published_state != runtime.state:
                self.metrics.set_machine_state(runtime.name, runtime.state)
                runtime.published_state = runtime.state
            if runtime.newest_ts is not None:
                self.metrics.last_reading_timestamp.labels(machine=runtime.name).set(
                    runtime.newest_ts
                )
        with self._snapshot_lock:
            self._snapshot = snapshot

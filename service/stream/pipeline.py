"""`Pipeline` thread: queue -> windows -> batched scoring -> alerts -> publish.

The MQTT callback only parses and enqueues; all per-machine state lives on this thread, so
it needs no locks. Results of the fine-tuner arrive through `install` and are taken in at
the start of a cycle.

A cycle costs what its readings cost, not what the plant costs: only machines that took
readings are advanced, counted and described again, and all their windows are scored
together (`service.scoring.stacked`: one model call per group of like-shaped models).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter
from typing import Any, NamedTuple

import numpy as np
import structlog

from service.core import heap
from service.core.config import Settings
from service.core.metrics import Metrics
from service.core.threads import InjectedFaultError, Worker
from service.core.types import (
    FloatArray,
    MachineState,
    Reading,
    Rejection,
    RejectReason,
    Row,
    Score,
    Window,
)
from service.learning.finetune import FineTuner, FitJob, FitResult
from service.learning.store import ModelStore
from service.scoring.detector import Detector
from service.scoring.stacked import Scored, StackedScorer
from service.stream.machines import DriftEvent, MachineRuntime, TooFewWindowsError
from service.stream.publish import Publisher
from service.stream.rejections import RejectionLog

log = structlog.get_logger(__name__)

_MACHINE = attrgetter("machine")
_VALUES = attrgetter("values")
# Jobs waiting for the fine-tuner beyond which no fine-tune job is built. Machines that
# learned together fall due together, and each job holds a clone and its training windows:
# a plant's worth at once stalled the cycle that built them (2 s at 1,000 machines) and
# queued hundreds of MB.
MAX_QUEUED_JOBS = 4
# Seconds between freezes of the long-lived objects (service.core.heap.freeze): a plant's first
# fits arrive over a minute or so, and each freeze keeps whatever cyclic garbage exists.
FREEZE_INTERVAL = 30.0
# Windows in a cycle from which it is scored in parts on the scoring thread (a batch's
# cycles: thousands), each part's model calls beside the Python that takes the part before.
OVERLAP_WINDOWS = 2_048
OVERLAP_PARTS = 4

# A cycle's scoring work: each machine's current detector and windows [n, time, sensors].
Work = dict[str, tuple[Detector, FloatArray]]


class Batch(NamedTuple):
    """One MQTT message's accepted values. A named tuple: one is made per message on
    paho's thread, and a frozen dataclass costs three times as much to build."""

    received_at: float
    readings: list[Reading]
    # Called once the readings are taken in (counted accepted or rejected): the MQTT
    # message is acknowledged only then, so the broker re-sends what a crash lost.
    ack: Callable[[], None] | None = None
    # Whole records of `machine` (service.stream.ingest), which come before `readings`.
    rows: Sequence[Row] = ()
    machine: str = ""


@dataclass(slots=True)
class Arrivals:
    """One machine's rows and readings of a cycle, in arrival order: spans of rows, each
    followed by readings, since a message's rows come before its readings."""

    spans: list[tuple[list[Row], list[Reading]]] = field(default_factory=list)
    count: int = 0  # values: readings and every row's

    def add_rows(self, rows: Sequence[Row]) -> None:
        if not self.spans or self.spans[-1][1]:
            self.spans.append(([], []))
        self.spans[-1][0].extend(rows)
        self.count += sum(map(len, map(_VALUES, rows)))

    def add_readings(self, readings: list[Reading]) -> None:
        if not self.spans:
            self.spans.append(([], []))
        self.spans[-1][1].extend(readings)
        self.count += len(readings)


def _split(work: Work, size: int) -> list[Work]:
    """`work` cut into runs of machines of about `size` windows each."""
    out: list[Work] = [{}]
    windows = 0
    for name, item in work.items():
        if windows >= size:
            out.append({})
            windows = 0
        out[-1][name] = item
        windows += len(item[1])
    return out


def _by_machine(batches: list[Batch]) -> dict[str, Arrivals]:
    """The batches' rows and readings per machine, each machine's in arrival order."""
    runs: dict[str, Arrivals] = {}
    for batch in batches:
        if batch.rows:
            arrivals = runs.get(batch.machine)
            if arrivals is None:
                arrivals = runs[batch.machine] = Arrivals()
            arrivals.add_rows(batch.rows)
        # A message's readings are of one machine; groupby keeps a mixed list right too.
        for machine, run in groupby(batch.readings, _MACHINE):
            arrivals = runs.get(machine)
            if arrivals is None:
                arrivals = runs[machine] = Arrivals()
            arrivals.add_readings(list(run))
    return runs


class Pipeline(Worker):
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        rejections: RejectionLog,
        publisher: Publisher,
        finetuner: FineTuner,
        store: ModelStore | None = None,
        together: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        super().__init__("pipeline", metrics)
        # A cycle's acks are queued inside it: paho's thread is woken once for all of them
        # (service.transport.mqtt._Client).
        self.together = together
        self.rejections = rejections
        self.store = store
        self.settings = settings
        self.publisher = publisher
        self.finetuner = finetuner
        # SimpleQueue (C) costs a fraction of Queue per message; `submit` keeps the bound.
        self.queue: queue.SimpleQueue[Batch] = queue.SimpleQueue()
        self.machines: dict[str, MachineRuntime] = {}
        self.scorer = StackedScorer()
        self._scoring = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring")
        self._installs: queue.Queue[FitResult] = queue.Queue()
        self._stopping = threading.Event()
        self._drain_until = 0.0
        # Machines whose description or gauges may have changed since the last cycle.
        self._changed: dict[str, MachineRuntime] = {}
        # The first cycle freezes what start-up made: imports, saved models, runtimes.
        self._installed_since_freeze = True
        self._frozen_at = -FREEZE_INTERVAL
        self._snapshot: dict[str, dict[str, Any]] = {}
        self._snapshot_lock = threading.Lock()
        self.fault_armed = False  # test-only: see service.core.threads.FAULT_ENV
        self.stall_armed = False  # test-only: take nothing from the queue
        for name, machine in settings.machines.items():
            self._add_machine(name, machine.sensors, machine.period)
        for name in store.machines() if store is not None else []:
            if name not in self.machines:
                self._add_machine(name, None, None)
        self._publish_snapshot()

    # -- called from other threads ------------------------------------------------------
    def submit(self, batch: Batch) -> bool:
        """Hands readings over; False when the queue is full (the caller counts overloaded).
        Only paho's network thread submits, so the size cannot change between the check
        and the put but downwards."""
        if self.queue.qsize() >= self.settings.ingest.queue_size:
            return False
        self.queue.put(batch)
        return True

    def install(self, result: FitResult) -> None:
        self._installs.put(result)

    def stop(self, drain_timeout: float) -> None:
        """Finish what is queued (up to `drain_timeout`), then end the thread."""
        self._drain_until = time.monotonic() + drain_timeout
        self._stopping.set()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._snapshot_lock:
            return list(self._snapshot.values())

    # -- the pipeline thread ------------------------------------------------------------
    def work(self) -> None:
        min_cycle = self.settings.pipeline.min_cycle
        while not self._stopping.is_set() or self._draining():
            started = time.monotonic()
            self.cycle(timeout=0.1)
            # A cycle woken by every message would take one or two, score a window or two
            # per model call, and fight paho's thread for the GIL after each of its socket
            # calls. Sleeping the rest lets the queue fill while paho runs alone; a stop
            # ends the sleep (the drain then cycles without it).
            rest = min_cycle - (time.monotonic() - started)
            if rest > 0:
                self._stopping.wait(rest)
        self._scoring.shutdown()
        left = self.queue.qsize()
        if left:
            log.warning("pipeline_stopped_with_queue", messages=left)
        log.info("pipeline_stopped")

    def _draining(self) -> bool:
        return not self.queue.empty() and time.monotonic() < self._drain_until

    def cycle(self, timeout: float) -> None:
        """One round: take in new models, drain the queue, score what is complete."""
        started = time.monotonic()
        self._take_installs()
        if self.stall_armed:
            self._stopping.wait(timeout)
            return
        waited = time.monotonic()
        batches = self._drain(timeout)
        # The cycle's work, without its wait for the first message.
        started += time.monotonic() - waited
        if batches and self.fault_armed:
            raise InjectedFaultError("AEMON_TEST_FAULT=pipeline")
        touched: dict[str, MachineRuntime] = {}
        accepted: dict[str, int] = {}
        received = _by_machine(batches)
        # One run per machine and cycle, in arrival order: per-sensor messages bring one
        # reading each, and routing each alone cost more than taking it in.
        for machine, arrivals in received.items():
            self._route(machine, arrivals, touched, accepted)
        with self.together():
            for batch in batches:
                if batch.ack is not None:
                    batch.ack()
        for name, arrivals in received.items():
            self.metrics.received_of[name].inc(arrivals.count)
        for name, count in accepted.items():
            self.metrics.accepted_of[name].inc(count)
        # Only a new reading moves a machine's watermark, so only these can have windows.
        self._score({name: self._advance(runtime) for name, runtime in touched.items()})
        self._changed.update(touched)
        if batches:
            self.metrics.pipeline_lag.observe(time.time() - batches[0].received_at)
        self.metrics.queue_depth.set(self.queue.qsize())
        self._publish_snapshot()
        self._maybe_freeze()
        self.metrics.pipeline_cycle.observe(time.monotonic() - started)

    def _maybe_freeze(self) -> None:
        """After models are installed, their objects (and the runtimes') are long-lived:
        frozen, the collector's full collections stop walking them (service.core.heap.freeze)."""
        now = time.monotonic()
        if self._installed_since_freeze and now - self._frozen_at >= FREEZE_INTERVAL:
            self._installed_since_freeze = False
            self._frozen_at = now
            log.info("gc_frozen", objects=heap.freeze())

    def _advance(self, runtime: MachineRuntime) -> list[Window]:
        windows = runtime.advance()
        if gaps := runtime.new_gaps():
            self.metrics.window_gaps.labels(machine=runtime.name).inc(gaps)
        return windows

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

    def _route(
        self,
        machine: str,
        arrivals: Arrivals,
        touched: dict[str, MachineRuntime],
        accepted: dict[str, int],
    ) -> None:
        count = arrivals.count
        runtime = self.machines.get(machine)
        if runtime is None:
            if len(self.machines) >= self.settings.ingest.max_machines:
                limit = Rejection(RejectReason.UNKNOWN_TOPIC, "machine limit", count=count)
                self._count_rejection(limit)
                return
            runtime = self._add_machine(machine, None, None)
        rejections: list[Rejection] = []
        for rows, readings in arrivals.spans:
            if rows:
                rejections += runtime.add_rows(rows)
            if readings:
                rejections += runtime.add_many(readings)
        for rejection in rejections:
            self._count_rejection(rejection)
        if len(rejections) < count:
            accepted[machine] = accepted.get(machine, 0) + count - len(rejections)
            touched[machine] = runtime

    def _count_rejection(self, rejection: Rejection) -> None:
        self.rejections.record(rejection, rejection.machine)

    def _add_machine(
        self, name: str, sensors: tuple[str, ...] | None, period: float | None
    ) -> MachineRuntime:
        self.metrics.add_machine(name)
        detector = self._load_saved(name)
        if detector is not None and sensors is not None and detector.sensors != sensors:
            log.warning("saved_model_ignored", machine=name, reason="sensors changed in config")
            detector = None
        runtime = MachineRuntime(name, self.settings, sensors, period, detector)
        self.machines[name] = runtime
        self._changed[name] = runtime
        if detector is not None:
            self.metrics.model_version.labels(machine=name).set(detector.version)
            self.metrics.anomaly_threshold.labels(machine=name).set(detector.threshold)
        log.info(
            "machine_added",
            machine=name,
            sensors=runtime.sensors,
            state=runtime.state.value,
            model_version=detector.version if detector else None,
        )
        return runtime

    def _load_saved(self, name: str) -> Detector | None:
        if self.store is None:
            return None
        failures = self.store.unusable[name]
        detector = self.store.load_current(name)
        failed = self.store.unusable[name] - failures
        self.metrics.model_load_failures.labels(machine=name).inc(failed)
        return detector

    def _take_installs(self) -> None:
        while not self._installs.empty():
            result = self._installs.get_nowait()
            runtime = self.machines[result.machine]
            self._changed[runtime.name] = runtime
            detector = result.detector
            if result.initial:
                self._count_unscored(runtime)
                backlog = runtime.install(detector)
                self._installed_since_freeze = True
            else:
                runtime.tuned(detector)
                backlog = []
            if detector is not None:
                self.metrics.model_version.labels(machine=result.machine).set(detector.version)
                self.metrics.anomaly_threshold.labels(machine=result.machine).set(
                    detector.threshold
                )
            self._score({result.machine: backlog})  # a failed first fit learns from it

    def _count_unscored(self, runtime: MachineRuntime) -> None:
        if dropped := runtime.backlog_dropped:
            self.metrics.windows_unscored.labels(machine=runtime.name).inc(dropped)
            log.warning(
                "windows_unscored",
                machine=runtime.name,
                windows=dropped,
                reason="more windows came in while the first model was fitted than the "
                "backlog holds (learning.windows)",
            )

    def _score(self, windows: dict[str, list[Window]]) -> None:
        """Learning machines collect their windows; the others' are scored all at once."""
        work: Work = {}
        for name, machine_windows in windows.items():
            if not machine_windows:
                continue
            runtime = self.machines[name]
            if runtime.state == MachineState.LEARNING:
                self._learn(runtime, machine_windows)
            elif runtime.detector is not None:
                values = np.stack([w.values for w in machine_windows])
                work[name] = (runtime.detector, values)
        for part, scored in self._scored_parts(work):
            for name, (scores, errors) in scored.items():
                self._take_scores(self.machines[name], part[name][0], windows[name], scores, errors)

    def _scored_parts(self, work: Work) -> Iterator[tuple[Work, dict[str, Scored]]]:
        """`work` and its scores, in parts. A cycle of `OVERLAP_WINDOWS` or more is scored
        part by part on the scoring thread, the next part's model calls running while this
        thread takes the scores of the one before: the calls give the GIL up, so the model's
        time (two thirds of a batch's pipeline with conv) and the per-window Python overlap."""
        total = sum(len(values) for _, values in work.values())
        if total < OVERLAP_WINDOWS:
            if work:
                yield work, self._timed_score(work)
            return
        # Stack changes (models new to the scorer) on this thread, before any part runs.
        self.scorer.place(work)
        parts = _split(work, math.ceil(total / OVERLAP_PARTS))
        pending = self._scoring.submit(self._timed_score, parts[0])
        for k, part in enumerate(parts):
            scored = pending.result()
            if k + 1 < len(parts):
                pending = self._scoring.submit(self._timed_score, parts[k + 1])
            yield part, scored

    def _timed_score(self, work: Work) -> dict[str, Scored]:
        started = time.perf_counter()
        scored = self.scorer.score(work)
        self.metrics.scoring_latency.observe(time.perf_counter() - started)
        return scored

    def _learn(self, runtime: MachineRuntime, windows: list[Window]) -> None:
        job = runtime.collect(windows)
        if job is not None:
            log.info("machine_learning_complete", machine=runtime.name, windows=len(job))
            self.finetuner.submit(FitJob(runtime.name, runtime.sensors, job))

    def _take_scores(
        self,
        runtime: MachineRuntime,
        detector: Detector,
        windows: list[Window],
        scores: FloatArray,
        errors: FloatArray,
    ) -> None:
        """Alerts, fine-tuning buffer and gauges from one machine's scored windows."""
        name = runtime.name
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
                self.publisher.publish_alert(event)
                if event.kind == "raised":
                    self.metrics.alerts_raised.labels(machine=name).inc()
            runtime.buffer.observe(
                window.values, result.score, detector.threshold, runtime.alert_active
            )
            drift = runtime.observe_drift(result.score)
            if drift is not None:
                self._count_drift(runtime, drift, window.end_ts)
        runtime.last_score = float(scores[-1])
        runtime.scored_until = windows[-1].end_ts
        self.metrics.scored_of[name].inc(len(windows))
        self.metrics.score_of[name].set(runtime.last_score)
        self.metrics.firing_of[name].set(runtime.firing)
        self._count_excluded(runtime)
        self._maybe_finetune(runtime)

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
        if self.finetuner.jobs.qsize() >= MAX_QUEUED_JOBS:
            return  # still due: asked again at its next scored window
        try:
            job = runtime.finetune_job()
        except TooFewWindowsError as exc:
            self.metrics.finetune_runs.labels(machine=runtime.name, outcome="too_few_windows").inc()
            log.info("finetune_skipped", machine=runtime.name, clean_windows=exc.args[0])
            return
        if job is not None:
            log.info(
                "finetune_submitted",
                machine=runtime.name,
                reason=job.reason,
                windows=len(job.train),
            )
            self.finetuner.submit(job)

    def _publish_snapshot(self) -> None:
        """Describes again (for /api/machines) and updates the gauges of the machines that
        changed this cycle."""
        if not self._changed:
            return
        described = {}
        for name, runtime in self._changed.items():
            described[name] = runtime.describe()
            if runtime.published_state != runtime.state:
                self.metrics.set_machine_state(name, runtime.state)
                runtime.published_state = runtime.state
            if runtime.newest_ts is not None:
                self.metrics.last_reading_of[name].set(runtime.newest_ts)
        self._changed = {}
        with self._snapshot_lock:
            self._snapshot.update(described)

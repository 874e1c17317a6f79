"""`Pipeline` thread: queue -> windows -> batched scoring -> alerts -> publish.

The MQTT callback only parses and enqueues; all per-machine state lives on this thread, so
it needs no locks. Results of the fine-tuner arrive through `install` and are taken in at
the start of a cycle.

A cycle costs what its readings cost, not what the plant costs: only machines that took
readings are advanced, counted and described again, and all their windows are scored
together (`service.scoring.stacked`: one model call per group of like-shaped models).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import structlog

from service.core import heap
from service.core.config import Settings
from service.core.metrics import REJECTED, Metrics
from service.core.threads import Lull, Worker
from service.core.types import (
    AlertEvent,
    AlertKind,
    MachineRecord,
    MachineState,
    Rejection,
    Window,
)
from service.scoring.passes import ScoringPass, Work
from service.stream.admission import Admission
from service.stream.alert_journal import AlertJournal, take_up, take_up_one
from service.stream.arrivals import Arrivals, Batch, by_machine
from service.stream.board import Board
from service.stream.commands import Command, Outcome
from service.stream.history import alert_note, command_note, model_note
from service.stream.homeassistant import HomeAssistant
from service.stream.intake import Intake
from service.stream.learning import FitRequest, FitResult, Learner, SavedModels
from service.stream.machines import MachineRuntime
from service.stream.operator import Operator
from service.stream.publish import Publisher
from service.stream.registry import new_machine
from service.stream.rejections import RejectionLog
from service.stream.verdicts import Verdicts

log = structlog.get_logger(__name__)

# Wall-clock seconds between checks of the conditions that change with time alone
# (scheduled maintenance, staleness).
CONDITIONS_INTERVAL = 1.0


class Pipeline(Worker):
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        rejections: RejectionLog,
        publisher: Publisher,
        learner: Learner,
        store: SavedModels | None = None,
        together: Callable[[], AbstractContextManager[None]] = nullcontext,
        journal: AlertJournal | None = None,
        lull: Lull | None = None,
    ) -> None:
        super().__init__("pipeline", metrics)
        # A cycle's acks are queued inside it: paho's thread is woken once for all of them
        # (service.transport.mqtt._Client).
        self.together = together
        self.rejections = rejections
        self.store = store
        self.settings = settings
        self.publisher = publisher
        self.learner = learner
        i, p = settings.ingest, settings.pipeline
        self.queue = Intake(i.queue_size, i.max_queued_readings, p.max_batch, p.max_batch_readings)
        self.machines: dict[str, MachineRuntime] = {}
        self.scoring = ScoringPass(metrics.scoring_latency)
        self._installs: queue.Queue[FitResult] = queue.Queue()
        self._stopping = threading.Event()
        # Its waits, when the fine-tuner's training batches and /metrics renders
        # (service.transport.exposition) take their turns.
        self.lull = lull or Lull()
        self._drain_until = 0.0
        # Machines whose description or gauges may have changed since the last cycle.
        self._changed: dict[str, MachineRuntime] = {}
        self.freezer = heap.Freezer()
        self.board = Board(metrics)
        ha = settings.homeassistant
        self.homeassistant = HomeAssistant(ha, publisher) if ha.enabled else None
        self.journal = journal
        self.operator = Operator(self, metrics, publisher, settings.discovery.period)
        self.verdicts = Verdicts(metrics, learner, self.emit)
        self._commands: queue.Queue[tuple[str, Command, Callable[[Outcome], None]]] = queue.Queue()
        self._conditions_at = 0.0
        self.admission = Admission(settings, metrics, self._count_rejection)
        # Machines another replica took over, and the readings queued when it did.
        self._releases: deque[tuple[list[str], int]] = deque()
        # Scaled out, a replica takes up a machine when its readings come: another may own it.
        scaled_out = settings.input.kind == "nats"
        for name, machine in ({} if scaled_out else settings.machines).items():
            self._add_machine(name, machine.sensors, machine.period)
        for name in store.machines() if store is not None and not scaled_out else []:
            if name not in self.machines:
                self._add_machine(name, None, None)
        if journal is not None:
            take_up(journal, self.machines, self.publisher, self.metrics)
        self._publish_snapshot()

    # -- called from other threads ------------------------------------------------------
    def submit(self, batch: Batch) -> bool:
        """Hands readings over; False when the queue is full, in messages or readings (the
        caller counts overloaded). Only paho's network thread submits, so what is queued
        cannot change between the check and the put but downwards."""
        return self.queue.put(batch)

    def release(self, machines: list[str]) -> None:
        """Another replica took over these machines (`input.kind = "nats"`): they are
        forgotten here, but not their models or alerts, once the readings queued now are
        taken in. Called from the input's thread, the only one that queues readings."""
        self._releases.append((machines, self.queue.readings_put))

    def install(self, result: FitResult) -> None:
        self._installs.put(result)

    def command(self, machine: str, command: Command, reply: Callable[[Outcome], None]) -> None:
        """Queues an operator command; `reply` gets its outcome from the pipeline thread."""
        self._commands.put((machine, command, reply))

    def stop(self, deadline: float) -> None:
        """Finish what is queued until `deadline` (monotonic), then end the thread."""
        self._drain_until = deadline
        self._stopping.set()

    def snapshot(self) -> list[MachineRecord]:
        return self.board.records()

    # -- the pipeline thread ------------------------------------------------------------
    def work(self) -> None:
        min_cycle = self.settings.pipeline.min_cycle
        with self.lull.running():
            while not self._stopping.is_set() or self._draining():
                started = time.monotonic()
                self.cycle(timeout=0.1)
                self.lull.hand_over()
                # A cycle woken by every message would take one or two, score a window or
                # two per model call, and fight paho's thread for the GIL after each of its
                # socket calls. Sleeping the rest lets the queue fill while paho runs alone;
                # a stop ends the sleep (the drain then cycles without it).
                rest = min_cycle - (time.monotonic() - started)
                if rest > 0:
                    with self.lull.waiting():
                        self._stopping.wait(rest)
        self.scoring.shutdown()
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
        self._take_commands()
        waited = time.monotonic()
        with self.lull.waiting():
            batches = self.queue.take(timeout)
        # The cycle's work, without its wait for the first message.
        started += time.monotonic() - waited
        touched: dict[str, MachineRuntime] = {}
        accepted: dict[str, int] = {}
        received = by_machine(batches)
        # One run per machine and cycle, in arrival order: per-sensor messages bring one
        # reading each, and routing each alone cost more than taking it in.
        for machine, arrivals in received.items():
            self._route(machine, arrivals, touched, accepted)
        with self.together():
            for batch in batches:
                if batch.ack is not None:
                    batch.ack()
        for name, arrivals in received.items():
            label = name if name in self.machines else REJECTED
            self.metrics.received_of[label].inc(arrivals.count)
        for name, count in accepted.items():
            self.metrics.accepted_of[name].inc(count)
        self.operator.seen(touched.values())
        # Only a new reading moves a machine's watermark, so only these can have windows.
        self._score({name: self._advance(runtime) for name, runtime in touched.items()})
        self._changed.update(touched)
        if batches:
            self.metrics.pipeline_lag.observe(time.time() - batches[0].received_at)
        self.metrics.queue_depth.set(self.queue.qsize())
        self.metrics.queue_readings.set(self.queue.readings)
        self._follow_conditions()
        self._publish_snapshot()
        self.freezer.poll()
        self.metrics.pipeline_cycle.observe(time.monotonic() - started)

    def _advance(self, runtime: MachineRuntime) -> list[Window]:
        windows = runtime.advance()
        if gaps := runtime.new_gaps():
            self.metrics.window_gaps.labels(machine=runtime.name).inc(gaps)
        return windows

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
            if not self.admission.admits(len(self.machines)):
                self.admission.refuse(machine, count)
                return
            runtime = self._add_machine(machine, *self.admission.sensors_of(machine))
            self.operator.announce(runtime)
            if self.journal is not None and (alert := self.journal.firing(machine)):
                take_up_one(alert, runtime, self.journal, self.publisher, self.metrics)
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
        label = rejection.machine if rejection.machine in self.machines else REJECTED
        self.rejections.record(rejection, label)

    def _add_machine(
        self, name: str, sensors: tuple[str, ...] | None, period: float | None
    ) -> MachineRuntime:
        runtime = new_machine(name, sensors, period, self.settings, self.metrics, self.store)
        self.machines[name] = runtime
        self._changed[name] = runtime
        return runtime

    def _take_installs(self) -> None:
        while not self._installs.empty():
            result = self._installs.get_nowait()
            runtime = self.machines.get(result.machine)
            if runtime is None:  # released or forgotten while it was fitted
                continue
            self._changed[runtime.name] = runtime
            note = model_note(result, time.time())
            runtime.last_fit, runtime.last_fit_at = note["outcome"], note["at"]
            runtime.history.note(note)
            detector = result.detector
            if result.initial:
                self._count_unscored(runtime)
                backlog = runtime.install(detector)
                self.freezer.installed()
            else:
                self.verdicts.tuned(runtime, detector)
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
        """Learning machines collect their windows; the others' are scored all at once.
        Windows of a machine in maintenance or off are neither."""
        work: Work = {}
        scored_windows: dict[str, list[Window]] = {}
        for name, all_windows in windows.items():
            runtime = self.machines[name]
            machine_windows, values = self.operator.running(runtime, all_windows)
            if not machine_windows:
                continue
            if runtime.state == MachineState.LEARNING:
                self._learn(runtime, machine_windows)
            elif runtime.detector is not None:
                if values is None:
                    values = np.stack([w.values for w in machine_windows])
                work[name] = (runtime.detector, values)
                scored_windows[name] = machine_windows
        for part, scored in self.scoring.parts(work):
            for name, (scores, errors) in scored.items():
                runtime = self.machines[name]
                self.verdicts.take(runtime, part[name][0], scored_windows[name], scores, errors)

    def _learn(self, runtime: MachineRuntime, windows: list[Window]) -> None:
        job = runtime.collect(windows)
        if job is not None:
            log.info("machine_learning_complete", machine=runtime.name, windows=len(job))
            reason = "relearn" if runtime.relearning else "learned"
            self.learner.submit(FitRequest(runtime.name, runtime.sensors, job, reason))

    def _publish_snapshot(self) -> None:
        """Describes again (for /api/machines) and updates the gauges of the machines that
        changed this cycle."""
        if self._changed:
            if self.homeassistant is not None:
                self.homeassistant.follow(self._changed, time.monotonic())
            self.board.refresh(self._changed)
            self._changed = {}

    # -- operators and conditions ---------------------------------------------------------
    def emit(self, runtime: MachineRuntime, event: AlertEvent | None) -> None:
        """An alert event out (MQTT, journal, gauges); with None, only marks the machine's
        description and gauges to be refreshed."""
        name = runtime.name
        self._changed[name] = runtime
        if event is None:
            return
        runtime.history.note(alert_note(event))
        self.publisher.publish_alert(event)
        if self.journal is not None:
            self.journal.record(event)
        if event.kind == AlertKind.RAISED:
            self.metrics.alerts_raised.labels(machine=name).inc()
        self.metrics.firing_of[name].set(runtime.firing)
        acknowledged = runtime.firing and runtime.tracker.acknowledged_by is not None
        self.metrics.alert_acknowledged.labels(machine=name).set(acknowledged)

    def _let_go(self, name: str) -> MachineRuntime:
        """Forgets the machine's runtime, scorer and series; its models stay."""
        runtime = self.machines.pop(name)
        self.learner.drop(name)
        self.admission.room_made()
        self._changed.pop(name, None)
        self.scoring.scorer.forget(name)
        self.metrics.remove_machine(name)
        self.board.remove(name)
        return runtime

    def _take_releases(self) -> None:
        releases = self._releases
        while releases and releases[0][1] <= self.queue.taken:
            for name in releases.popleft()[0]:
                if name in self.machines:
                    self._let_go(name)
                    log.info("machine_released", machine=name, reason="partition moved")

    def drop_machine(self, name: str) -> None:
        runtime = self._let_go(name)
        if self.homeassistant is not None:
            self.homeassistant.forget(name)
        self.publisher.clear_alert(name)
        if self.journal is not None:
            self.journal.forget(name)
        aside = self.store.forget(name) if self.store is not None else None
        log.warning(
            "machine_forgotten", machine=name, models_moved_to=str(aside), sensors=runtime.sensors
        )

    def _take_commands(self) -> None:
        while not self._commands.empty():
            machine, command, reply = self._commands.get_nowait()
            outcome = self.operator.run(machine, command)
            if (runtime := self.machines.get(machine)) is not None:
                runtime.history.note(command_note(command, outcome))
            reply(outcome)
        self.operator.take_offline()
        self._take_releases()

    def _follow_conditions(self) -> None:
        now = time.time()
        if now - self._conditions_at >= CONDITIONS_INTERVAL:
            self._conditions_at = now
            for runtime in self.machines.values():
                self.operator.follow_conditions(runtime, now, self.settings.alert.stale_after)

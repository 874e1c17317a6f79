"""`Operator`: carries out operator commands on the pipeline thread, where every machine's
state lives. Each command is logged with `by` and `reason`, counted, and published on
`aemon/events`; a refused one says why and changes nothing.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterable
from typing import Protocol

import numpy as np
import structlog

from service.core.metrics import Metrics
from service.core.types import AlertEvent, FloatArray, Resolution, Window
from service.stream.commands import Command, CommandError, Outcome
from service.stream.machines import MachineRuntime
from service.stream.publish import Publisher, rfc3339

log = structlog.get_logger(__name__)


class Host(Protocol):
    """What the operator needs of the pipeline."""

    machines: dict[str, MachineRuntime]

    def emit(self, runtime: MachineRuntime, event: AlertEvent | None) -> None:
        """Publishes an alert event and keeps its gauges and journal; marks it changed."""

    def drop_machine(self, name: str) -> None:
        """Removes every trace of the machine: runtime, stack, series, record, models."""


class Operator:
    def __init__(
        self, host: Host, metrics: Metrics, publisher: Publisher, discovery_period: float = 0.0
    ) -> None:
        self.host = host
        self.metrics = metrics
        self.publisher = publisher
        # Machines first heard of after this (wall-clock) are announced: at start-up the
        # whole plant is new, later a new name may be a typo in a topic.
        self._announce_after = time.time() + discovery_period
        # Machines their source said are gone (a Sparkplug death), from any thread.
        self._offline: queue.SimpleQueue[str] = queue.SimpleQueue()

    def announce(self, runtime: MachineRuntime) -> None:
        """A machine first heard of well after start-up: worth a look (a typo in a topic
        makes one too)."""
        if time.time() < self._announce_after:
            return
        self.metrics.machines_discovered.inc()
        log.warning("machine_discovered", machine=runtime.name)
        self.publisher.publish_event(
            {"event": "machine_discovered", "machine": runtime.name, "at": rfc3339(time.time())}
        )

    def mark_offline(self, machines: list[str]) -> None:
        """Their source said they are gone; any thread (taken at the next cycle)."""
        for name in machines:
            self._offline.put(name)

    def take_offline(self) -> None:
        while not self._offline.empty():
            runtime = self.host.machines.get(self._offline.get_nowait())
            if runtime is not None:
                self.went_offline(runtime)

    def run(self, machine: str, command: Command) -> Outcome:
        now = time.time()
        said = {"machine": machine, "command": command.command, "by": command.by}
        said["reason"] = command.reason
        runtime = self.host.machines.get(machine)
        try:
            if runtime is None:
                raise CommandError(f"unknown machine {machine!r}")
            detail = self._carry_out(runtime, command, now)
        except CommandError as exc:
            self._count(command, "refused")
            log.warning("command_refused", **said, error=str(exc))
            return Outcome(command.command, False, str(exc), now, runtime is None)
        self._count(command, "ok")
        log.info("command", **said, **detail)
        self.publisher.publish_event({"event": "command", **said, "at": rfc3339(now), **detail})
        return Outcome(command.command, True, None, now)

    def _count(self, command: Command, outcome: str) -> None:
        self.metrics.commands.labels(command=command.command, outcome=outcome).inc()

    def _carry_out(
        self, runtime: MachineRuntime, command: Command, now: float
    ) -> dict[str, object]:
        name = command.command
        if name == "ack":
            return self._ack(runtime, command, now)
        if name == "false_alarm":
            return self._false_alarm(runtime, command)
        if name == "relearn":
            self._resolve(runtime, Resolution.RELEARN)
            runtime.relearn(command.windows)
            return {"windows": runtime.learning_windows}
        if name == "maintenance":
            until = command.maintenance_end(now)
            runtime.conditions.begin_maintenance(until, command.reason or "maintenance")
            self.enter_or_leave_maintenance(runtime, now)
            return {"until": rfc3339(until)}
        if name == "maintenance_end":
            if runtime.conditions.maintenance_until is None:
                raise CommandError("the machine is not in maintenance")
            runtime.conditions.end_maintenance(now)
            self.enter_or_leave_maintenance(runtime, now)
            return {}
        self._resolve(runtime, Resolution.FORGOTTEN)
        self.host.drop_machine(runtime.name)
        return {}

    def _ack(self, runtime: MachineRuntime, command: Command, now: float) -> dict[str, object]:
        event = runtime.tracker.acknowledge(command.by, now)
        if event is None:
            raise CommandError("no firing alert to acknowledge")
        self.host.emit(runtime, event)
        return {"alert_id": event.alert_id}

    def _false_alarm(self, runtime: MachineRuntime, command: Command) -> dict[str, object]:
        tracker = runtime.tracker
        wanted = command.alert_id
        firing = tracker.alert_id
        if wanted is not None and wanted not in (firing, tracker.last_alert_id):
            raise CommandError(f"alert {wanted} is not the machine's current or last alert")
        if firing is None and tracker.last_alert_id is None:
            raise CommandError("no alert to call a false alarm")
        alert_id = firing or tracker.last_alert_id
        self._resolve(runtime, Resolution.FALSE_ALARM)
        released = runtime.buffer.release_episode()
        self.metrics.false_alarms.labels(machine=runtime.name).inc()
        return {"alert_id": alert_id, "windows_released": released}

    def enter_or_leave_maintenance(self, runtime: MachineRuntime, now: float) -> None:
        """Follows a change of the machine's maintenance (a command or its schedule): a
        firing alert ends as the maintenance begins."""
        began = runtime.conditions.update_maintenance(now)
        if began is None:
            return
        if began:
            self._resolve(runtime, Resolution.MAINTENANCE)
        event = "maintenance_begins" if began else "maintenance_ends"
        until = runtime.conditions.maintenance_until
        said = {"machine": runtime.name, "reason": runtime.conditions.maintenance_reason}
        log.info(event, **said, until=until)
        self.publisher.publish_event(
            {"event": event, **said, "at": rfc3339(now), "until": rfc3339(until)}
        )
        self.host.emit(runtime, None)

    def running(
        self, runtime: MachineRuntime, windows: list[Window]
    ) -> tuple[list[Window], FloatArray | None]:
        """The windows of a running machine outside maintenance, the ones to score or learn
        from, and their values stacked `[n, time, sensors]` when they were (None: not
        needed). The others are counted; a change between off and running is logged."""
        conditions = runtime.conditions
        skipped = self.metrics.windows_skipped
        if conditions.maintenance_until is not None and windows:
            skipped.labels(machine=runtime.name, reason="maintenance").inc(len(windows))
            return [], None
        detector = runtime.detector
        running = (detector.mean, detector.std) if detector is not None else None
        if not windows or not conditions.may_be_off(running):
            return windows, None
        values = np.stack([w.values for w in windows])
        off = conditions.off_windows(values, runtime.sensors, running)
        if bool(off[-1]) != conditions.off:
            conditions.off = bool(off[-1])
            log.info("machine_off" if off[-1] else "machine_running", machine=runtime.name)
            self.host.emit(runtime, None)
        if not off.any():
            return windows, values
        skipped.labels(machine=runtime.name, reason="off").inc(int(off.sum()))
        kept = [w for w, is_off in zip(windows, off.tolist(), strict=True) if not is_off]
        return kept, values[~off]

    def seen(self, runtimes: Iterable[MachineRuntime]) -> None:
        """These machines' readings were just accepted: none of them is stale."""
        now = time.time()
        for runtime in runtimes:
            runtime.conditions.last_seen = now
            if runtime.conditions.stale or runtime.conditions.offline:
                runtime.conditions.stale = runtime.conditions.offline = False
                log.info("machine_back", machine=runtime.name)

    def follow_conditions(self, runtime: MachineRuntime, now: float, stale_after: float) -> None:
        """The conditions that change with time alone: a scheduled maintenance window, and
        staleness (no reading for `stale_after` seconds), which ends a firing alert."""
        self.enter_or_leave_maintenance(runtime, now)
        conditions = runtime.conditions
        stale = not conditions.offline and 0 < stale_after < now - conditions.last_seen
        if stale == conditions.stale:
            return
        conditions.stale = stale
        if stale:
            log.warning(
                "machine_stale", machine=runtime.name, silent_s=round(now - conditions.last_seen, 1)
            )
            self._resolve(runtime, Resolution.NO_DATA)
        self.host.emit(runtime, None)

    def went_offline(self, runtime: MachineRuntime) -> None:
        """Its source said it is gone (a Sparkplug death): shown `off` until its next
        reading, not stale; a firing alert waits for it, as for a machine switched off."""
        if not runtime.conditions.offline:
            runtime.conditions.offline = True
            runtime.conditions.stale = False
            log.info("machine_offline", machine=runtime.name)
            self.host.emit(runtime, None)

    def _resolve(self, runtime: MachineRuntime, resolution: Resolution) -> None:
        ended_at = runtime.newest_ts if runtime.newest_ts is not None else time.time()
        self.host.emit(runtime, runtime.tracker.resolve(resolution, ended_at))

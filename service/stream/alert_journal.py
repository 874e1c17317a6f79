"""`AlertJournal`: the firing alerts, kept in the state directory so that a restart takes
each one up (same id, same start) instead of leaving its retained `firing` message with
nobody to resolve it. Written whole and atomically on every alert event (a few a minute
per firing machine); read once at start.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import orjson
import structlog

from service.core.metrics import Metrics
from service.core.types import AlertEvent, AlertKind, AlertState, Resolution, SensorShare
from service.stream.machines import MachineRuntime
from service.stream.publish import Publisher

log = structlog.get_logger(__name__)


class AlertJournal:
    def __init__(self, path: Path | None) -> None:
        self.path = path  # None: kept in memory only
        self._firing: dict[str, AlertEvent] = {}

    def load(self) -> list[AlertEvent]:
        """The alerts that were firing when the daemon stopped."""
        if self.path is None:
            return []
        try:
            records = orjson.loads(self.path.read_bytes())
            self._firing = {r["machine"]: event_from(r) for r in records}
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("alert_journal_unreadable", path=str(self.path), error=str(exc))
            return []
        return list(self._firing.values())

    def firing(self, machine: str) -> AlertEvent | None:
        """A firing alert of a machine taken over from another replica; none here (the
        journal of one process is loaded whole at start)."""
        return None

    def record(self, event: AlertEvent) -> None:
        if event.state == AlertState.FIRING:
            self._firing[event.machine] = event
        elif self._firing.pop(event.machine, None) is None:
            return
        self._write()

    def forget(self, machine: str) -> None:
        """A forgotten machine's alert is no longer taken up."""
        if self._firing.pop(machine, None) is not None:
            self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        data = orjson.dumps([asdict(e) for e in self._firing.values()])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".alerts-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("alert_journal_not_written", path=str(self.path), error=str(exc))


def event_from(record: dict[str, Any]) -> AlertEvent:
    resolution = record.get("resolution")
    shares = record["top_sensors"]
    return AlertEvent(
        kind=AlertKind(record["kind"]),
        alert_id=str(record["alert_id"]),
        machine=str(record["machine"]),
        state=AlertState(record["state"]),
        started_at=float(record["started_at"]),
        updated_at=float(record["updated_at"]),
        ended_at=None,
        score=float(record["score"]),
        peak_score=float(record["peak_score"]),
        threshold=float(record["threshold"]),
        top_sensors=tuple(SensorShare(s["sensor"], float(s["share"])) for s in shares),
        model_version=int(record["model_version"]),
        resolution=Resolution(resolution) if resolution else None,
        acknowledged_by=record.get("acknowledged_by"),
        acknowledged_at=record.get("acknowledged_at"),
    )


def take_up(
    journal: AlertJournal,
    machines: Mapping[str, MachineRuntime],
    publisher: Publisher,
    metrics: Metrics,
) -> None:
    """The alerts that fired when the daemon stopped: each scoring machine's episode goes
    on; one whose machine is gone or has no model is resolved (no data would end it)."""
    for event in journal.load():
        take_up_one(event, machines.get(event.machine), journal, publisher, metrics)


def take_up_one(
    event: AlertEvent,
    runtime: MachineRuntime | None,
    journal: AlertJournal,
    publisher: Publisher,
    metrics: Metrics,
) -> None:
    """One firing alert goes on at `runtime`, or is resolved when it cannot."""
    if runtime is not None and runtime.detector is not None:
        runtime.tracker.restore(event)
        metrics.firing_of[event.machine].set(1)
        acknowledged = event.acknowledged_by is not None
        metrics.alert_acknowledged.labels(machine=event.machine).set(acknowledged)
        log.info("alert_taken_up", machine=event.machine, alert_id=event.alert_id)
        return
    ended = replace(
        event,
        kind=AlertKind.RESOLVED,
        state=AlertState.RESOLVED,
        ended_at=event.updated_at,
        resolution=Resolution.NO_DATA,
    )
    publisher.publish_alert(ended)
    journal.record(ended)

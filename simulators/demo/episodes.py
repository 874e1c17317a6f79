"""The episode report: each injected fault against the daemon's alerts, in event time.

A fault (from the truth on `sim/truth/<machine>`) is detected when an alert episode of its
machine fires at some time between the fault's start and its end plus `grace`; the delay
runs from the fault's start to the alert's raise. An alert raised when no fault of its
machine was active (grace included) is a false alert.

>>> truth = [
...     {"machine": "pump-1", "fault": "cavitation", "state": "start", "ts": 100.0},
...     {"machine": "pump-1", "fault": "cavitation", "state": "end", "ts": 400.0},
...     {"machine": "fan-1", "fault": "imbalance", "state": "start", "ts": 200.0},
... ]
>>> events = [
...     alert("a", "pump-1", "raised", updated=130.0, started=120.0),
...     alert("a", "pump-1", "resolved", updated=450.0, started=120.0, ended=410.0),
...     alert("b", "pump-1", "raised", updated=900.0, started=890.0),
... ]
>>> report = build_report(truth, events, grace=60.0, end_ts=1000.0)
>>> [(f.machine, f.detected, f.delay_s, f.open) for f in report.faults]
[('pump-1', True, 30.0, False), ('fan-1', False, None, True)]
>>> [(e.machine, e.raised_at) for e in report.false_alerts]
[('pump-1', 900.0)]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


def parse_time(text: str | None) -> float | None:
    """RFC 3339 (the daemon's times) to Unix seconds.

    >>> parse_time("2026-11-23T09:28:16.500Z")
    1795426096.5
    """
    return None if text is None else datetime.fromisoformat(text).timestamp()


@dataclass(frozen=True)
class Episode:
    """One alert of the daemon, from its events on `aemon/events`."""

    alert_id: str
    machine: str
    raised_at: float  # event time of the window that raised it
    started_at: float
    ended_at: float | None  # None: still firing when the run ended
    peak_ratio: float  # highest score over threshold seen in its events
    top_sensors: tuple[str, ...]

    def fires_during(self, start: float, end: float) -> bool:
        return self.raised_at <= end and (self.ended_at is None or self.ended_at >= start)


@dataclass(frozen=True)
class FaultResult:
    machine: str
    fault: str
    start: float
    end: float
    open: bool  # the run ended before the fault did: `end` is the run's end
    detected: bool
    delay_s: float | None
    alert_id: str | None
    top_sensors: tuple[str, ...] = ()


@dataclass
class Report:
    faults: list[FaultResult]
    false_alerts: list[Episode]
    grace_s: float
    end_ts: float
    start_ts: float = 0.0  # the plant's first reading, for times relative to it
    not_reached: list[str] = field(default_factory=list)  # scheduled, after the run's end
    # Machines AemonMachineAnomalous fired for; None: Prometheus did not answer.
    prometheus_fired: list[str] | None = field(default_factory=list)

    @property
    def detected(self) -> list[FaultResult]:
        return [f for f in self.faults if f.detected]

    def to_dict(self) -> dict[str, Any]:
        return {
            "faults": [asdict(f) for f in self.faults],
            "false_alerts": [asdict(e) for e in self.false_alerts],
            "detected": len(self.detected),
            "injected": len(self.faults),
            "grace_s": self.grace_s,
            "start_ts": self.start_ts,
            "end_ts": self.end_ts,
            "not_reached": self.not_reached,
            "prometheus_fired": self.prometheus_fired,
        }


def alert(
    alert_id: str,
    machine: str,
    event: str,
    *,
    updated: float,
    started: float,
    ended: float | None = None,
    ratio: float = 2.0,
) -> dict[str, Any]:
    """An `aemon/events` payload with Unix times (the daemon sends RFC 3339), for examples."""
    return {
        "alert_id": alert_id,
        "machine": machine,
        "event": event,
        "updated_at": updated,
        "started_at": started,
        "ended_at": ended,
        "score": ratio,
        "threshold": 1.0,
        "top_sensors": [],
    }


def _ts(value: str | float | None) -> float | None:
    return parse_time(value) if isinstance(value, str) else value


def episodes(events: Iterable[Mapping[str, Any]]) -> list[Episode]:
    """One episode per alert id, in the order they were raised."""
    by_id: dict[str, list[Mapping[str, Any]]] = {}
    for event in events:
        by_id.setdefault(event["alert_id"], []).append(event)
    out = []
    for alert_id, group in by_id.items():
        raised = [e for e in group if e["event"] == "raised"] or group
        ended = [_ts(e["ended_at"]) for e in group if e["event"] == "resolved"]
        out.append(
            Episode(
                alert_id,
                group[0]["machine"],
                _ts(raised[0]["updated_at"]) or 0.0,
                _ts(group[0]["started_at"]) or 0.0,
                ended[0] if ended else None,
                max(e["score"] / e["threshold"] for e in group if e["threshold"] > 0),
                tuple(s["sensor"] for s in group[-1]["top_sensors"]),
            )
        )
    return sorted(out, key=lambda e: e.raised_at)


def fault_windows(
    truth: Iterable[Mapping[str, Any]], end_ts: float
) -> list[tuple[str, str, float, float, bool]]:
    """(machine, fault, start, end, open) from truth messages; a fault without its end
    message (the run stopped first) ends at `end_ts`."""
    open_faults: dict[tuple[str, str], float] = {}
    out = []
    for t in sorted(truth, key=lambda t: (t["ts"], t["state"] == "start")):
        key = (t["machine"], t["fault"])
        if t["state"] == "start":
            open_faults[key] = t["ts"]
        elif key in open_faults:
            out.append((*key, open_faults.pop(key), t["ts"], False))
    out += [(*key, start, max(start, end_ts), True) for key, start in open_faults.items()]
    return sorted(out, key=lambda f: f[2])


def build_report(
    truth: Iterable[Mapping[str, Any]],
    events: Iterable[Mapping[str, Any]],
    grace: float,
    end_ts: float,
) -> Report:
    alerts = episodes(events)
    faults = fault_windows(truth, end_ts)
    results = []
    for machine, fault, start, end, is_open in faults:
        hits = [e for e in alerts if e.machine == machine and e.fires_during(start, end + grace)]
        first = hits[0] if hits else None
        results.append(
            FaultResult(
                machine,
                fault,
                start,
                end,
                is_open,
                first is not None,
                None if first is None else max(0.0, first.raised_at - start),
                None if first is None else first.alert_id,
                () if first is None else first.top_sensors,
            )
        )
    false_alerts = [
        e
        for e in alerts
        if not any(m == e.machine and s <= e.raised_at <= end + grace for m, _, s, end, _ in faults)
    ]
    return Report(results, false_alerts, grace, end_ts)

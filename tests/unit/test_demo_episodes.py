"""The demo's episode report: faults against alerts, in event time."""

from __future__ import annotations

from typing import Any

from simulators.demo.episodes import alert, build_report, episodes, fault_windows


def truth(machine: str, fault: str, state: str, ts: float) -> dict[str, Any]:
    return {"machine": machine, "fault": fault, "state": state, "ts": ts}


CAVITATION = [
    truth("pump-1", "cavitation", "start", 100.0),
    truth("pump-1", "cavitation", "end", 400.0),
]


def test_an_alert_raised_in_the_grace_after_the_fault_detects_it() -> None:
    events = [alert("a", "pump-1", "raised", updated=450.0, started=440.0)]
    within = build_report(CAVITATION, events, grace=60.0, end_ts=1000.0)
    beyond = build_report(CAVITATION, events, grace=30.0, end_ts=1000.0)
    assert [(f.detected, f.delay_s) for f in within.faults] == [(True, 350.0)]
    assert within.false_alerts == []
    assert [f.detected for f in beyond.faults] == [False]
    assert [e.alert_id for e in beyond.false_alerts] == ["a"]


def test_an_alert_on_another_machine_neither_detects_the_fault_nor_is_forgiven() -> None:
    events = [alert("a", "pump-2", "raised", updated=150.0, started=140.0)]
    report = build_report(CAVITATION, events, grace=60.0, end_ts=1000.0)
    assert [f.detected for f in report.faults] == [False]
    assert [e.machine for e in report.false_alerts] == ["pump-2"]


def test_the_delay_runs_from_the_fault_start_to_the_first_raise_in_it() -> None:
    events = [
        alert("a", "pump-1", "raised", updated=130.0, started=120.0),
        alert("a", "pump-1", "resolved", updated=200.0, started=120.0, ended=190.0),
        alert("b", "pump-1", "raised", updated=300.0, started=290.0),
    ]
    report = build_report(CAVITATION, events, grace=0.0, end_ts=1000.0)
    (fault,) = report.faults
    assert (fault.delay_s, fault.alert_id, fault.open) == (30.0, "a", False)
    assert report.false_alerts == [], "a second episode inside the fault is not false"


def test_a_fault_the_run_cut_short_ends_with_the_run() -> None:
    started = CAVITATION[:1]
    (window,) = fault_windows(started, end_ts=250.0)
    assert window == ("pump-1", "cavitation", 100.0, 250.0, True)
    late = [alert("a", "pump-1", "raised", updated=320.0, started=310.0)]
    report = build_report(started, late, grace=0.0, end_ts=250.0)
    assert [(f.open, f.detected) for f in report.faults] == [(True, False)]


def test_episodes_read_the_daemons_rfc3339_times_and_keep_the_peak() -> None:
    events: list[dict[str, Any]] = [
        {
            "alert_id": "a",
            "machine": "fan-1",
            "event": event,
            "updated_at": updated,
            "started_at": "2026-11-23T09:00:00.000Z",
            "ended_at": ended,
            "score": score,
            "threshold": 0.5,
            "top_sensors": [{"sensor": "vibration", "share": 0.8}],
        }
        for event, updated, ended, score in [
            ("raised", "2026-11-23T09:00:20.000Z", None, 1.0),
            ("updated", "2026-11-23T09:01:20.000Z", None, 4.0),
            ("resolved", "2026-11-23T09:03:00.000Z", "2026-11-23T09:02:00.000Z", 0.1),
        ]
    ]
    (episode,) = episodes(events)
    assert episode.ended_at is not None
    assert (episode.raised_at - episode.started_at, episode.ended_at - episode.started_at) == (
        20.0,
        120.0,
    )
    assert episode.peak_ratio == 8.0
    assert episode.top_sensors == ("vibration",)

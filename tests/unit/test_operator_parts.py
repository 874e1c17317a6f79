"""The parts behind operator commands, one at a time: the alert tracker's acknowledge,
forced resolve and restore; the training buffer's release of a false alarm's windows;
the alert journal; the discovery allowlist; scheduled maintenance and the off rule."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from service.core.config import FinetuneSettings, MaintenanceWindow, Settings
from service.core.types import AlertKind, AlertState, RejectReason, Resolution, Score
from service.stream.alert import AlertTracker
from service.stream.alert_journal import AlertJournal
from service.stream.commands import CommandError, parse
from service.stream.conditions import Conditions, scheduled_span
from service.stream.ingest import Ingestor
from service.stream.training import TrainingBuffer

SENSORS = ("a", "b")


def score(ts: float, value: float) -> Score:
    return Score("m", ts, value, 1.0, (value, 0.0), SENSORS, 1)


def firing_tracker() -> AlertTracker:
    tracker = AlertTracker("m", k=2, n=3, m=2, top_n=2, update_interval=60.0)
    for ts in range(3):
        tracker.observe(score(float(ts), 5.0))
    assert tracker.state == AlertState.FIRING
    return tracker


def test_an_acknowledged_alert_keeps_firing_and_says_who() -> None:
    tracker = firing_tracker()
    event = tracker.acknowledge("ana", 1000.0)
    assert event is not None
    assert (event.kind, event.state, event.acknowledged_by) == (
        AlertKind.ACKNOWLEDGED,
        AlertState.FIRING,
        "ana",
    )
    assert tracker.state == AlertState.FIRING
    assert AlertTracker("n", 2, 3, 2, 2, 60.0).acknowledge("ana", 1.0) is None


def test_a_forced_resolve_names_its_reason_and_a_new_episode_is_not_acknowledged() -> None:
    tracker = firing_tracker()
    tracker.acknowledge("ana", 1000.0)
    first = tracker.alert_id
    event = tracker.resolve(Resolution.FALSE_ALARM, 2.5)
    assert event is not None
    assert (event.state, event.resolution, event.ended_at) == (
        AlertState.RESOLVED,
        Resolution.FALSE_ALARM,
        2.5,
    )
    assert tracker.last_alert_id == first
    for ts in range(10, 13):
        tracker.observe(score(float(ts), 5.0))
    assert tracker.alert_id != first
    assert tracker.acknowledged_by is None


def test_the_journal_gives_back_the_firing_alert_and_the_tracker_takes_it_up(
    tmp_path: Path,
) -> None:
    journal = AlertJournal(tmp_path / "alerts.json")
    tracker = firing_tracker()
    event = tracker.acknowledge("ana", 1000.0)
    assert event is not None
    journal.record(event)
    [restored] = AlertJournal(tmp_path / "alerts.json").load()
    assert restored == event
    later = AlertTracker("m", k=2, n=3, m=2, top_n=2, update_interval=60.0)
    later.restore(restored)
    assert (later.state, later.alert_id, later.acknowledged_by) == (
        AlertState.FIRING,
        event.alert_id,
        "ana",
    )
    ended = None
    for ts in range(10, 13):
        ended = ended or later.observe(score(float(ts), 0.1))
    assert ended is not None
    assert (ended.alert_id, ended.resolution) == (event.alert_id, Resolution.CLEAN)
    journal.record(ended)
    assert AlertJournal(tmp_path / "alerts.json").load() == []


def test_a_forgotten_machine_leaves_no_alert_to_take_up(tmp_path: Path) -> None:
    journal = AlertJournal(tmp_path / "alerts.json")
    event = firing_tracker().acknowledge("ana", 1000.0)
    assert event is not None
    journal.record(event)
    journal.forget(event.machine)
    assert AlertJournal(tmp_path / "alerts.json").load() == []


def test_a_false_alarm_releases_its_episode_windows_as_normal_data() -> None:
    buffer = TrainingBuffer(FinetuneSettings(admit_every=1, margin_windows=2, recent_windows=50))
    window = [np.full((3, 2), float(i), np.float32) for i in range(20)]
    for w in window[:5]:
        buffer.observe(w, 0.1, 1.0, alert_active=False)
    for w in window[5:10]:
        buffer.observe(w, 5.0, 1.0, alert_active=True)
    assert buffer.episodes
    admitted_before = len(buffer.recent)
    released = buffer.release_episode()
    # the two held windows that led up to it, and its five
    assert released == 7
    assert len(buffer.recent) == admitted_before + 7
    assert not buffer.episodes
    assert not buffer.cooling
    assert buffer.release_episode() == 0


def test_the_allowlist_takes_declared_and_matching_machines_only() -> None:
    ingestor = Ingestor(("plant/{machine}",), 4096, declared={"press-1": ("a",)}, allow=("pump-*",))
    payload = b'{"values": {"a": 1.0}}'
    for taken in ("pump-1", "press-1"):
        result = ingestor.parse(f"plant/{taken}", payload, 0.0)
        assert not result.rejections
        assert result.count == 1
    typo = ingestor.parse("plant/pmup-1", payload, 0.0)
    assert [r.reason for r in typo.rejections] == [RejectReason.UNKNOWN_TOPIC]
    assert typo.count == 0


def test_a_scheduled_window_spans_midnight_and_can_be_ended_early() -> None:
    settings = Settings.model_validate(
        {
            "maintenance": [
                {"machines": ["pump-*"], "weekdays": ["sat"], "start": "22:00", "hours": 4}
            ]
        }
    )
    sat_23h = datetime(2026, 12, 5, 23, tzinfo=UTC).timestamp()
    conditions = Conditions("pump-1", settings, None)
    assert Conditions("press-1", settings, None).schedule == []
    assert conditions.update_maintenance(sat_23h) is True
    assert conditions.maintenance_until == sat_23h + 3 * 3600
    assert conditions.update_maintenance(sat_23h + 60) is None
    conditions.end_maintenance(sat_23h + 120)
    assert conditions.update_maintenance(sat_23h + 120) is False
    assert conditions.update_maintenance(sat_23h + 3600) is None  # that occurrence stays ended
    window = MaintenanceWindow(weekdays=("sat",), start="22:00", hours=4)
    assert scheduled_span(window, sat_23h + 7 * 86400) is not None  # next week's


def test_off_by_rest_needs_every_sensor_still_and_away_from_its_level() -> None:
    conditions = Conditions("m", Settings(), None)
    running = (np.array([5.0, 5.0], np.float32), np.array([1.0, 1.0], np.float32))
    generator = np.random.default_rng(0)
    moving = (5 + generator.normal(size=(20, 2))).astype(np.float32)
    resting = np.zeros((20, 2), np.float32)  # a stopped machine: still, far from 5
    held = np.full((20, 2), 5.2, np.float32)  # a running machine's held values, a frozen feed
    one_still = moving.copy()
    one_still[:, 0] = 0.0
    stopping = np.concatenate([moving[:12], resting[:8]])
    starting = np.concatenate([resting[:8], moving[:12]])
    windows = np.stack([resting, stopping, starting, moving, one_still, held])
    off = conditions.off_windows(windows, SENSORS, running)
    assert off.tolist() == [True, True, True, False, False, False]
    assert not conditions.off_windows(windows, SENSORS, None).any()  # nothing learnt yet


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b'{"command": "maintenance", "by": "x"}', "maintenance needs"),
        (b'{"command": "relearn", "windows": 3}', "windows"),
        (b'{"command": "ack", "sudo": true}', "not a field"),
        (b"not json", "not JSON"),
        (b'{"command": "ack", "reason": "' + b"x" * 5000 + b'"}', "at most"),
    ],
)
def test_bad_commands_say_what_is_wrong(payload: bytes, error: str) -> None:
    with pytest.raises(CommandError, match=error):
        parse(payload)

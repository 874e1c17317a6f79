from __future__ import annotations

from service.core.types import AlertState, Score
from service.stream.alert import AlertTracker

SENSORS = ("current", "vibration", "temperature")


def score(ts: float, value: float, errors: tuple[float, ...] = (0.1, 0.8, 0.1)) -> Score:
    return Score("m", ts, value, 1.0, errors, SENSORS, 3)


def tracker(**kw: float) -> AlertTracker:
    args = {"k": 3, "n": 5, "m": 4, "top_n": 2, "update_interval": 10.0} | kw
    return AlertTracker("m", **args)  # type: ignore[arg-type]


def test_fewer_than_k_of_n_anomalous_windows_stay_pending() -> None:
    t = tracker()
    events = [t.observe(score(i, v)) for i, v in enumerate([2, 0, 2, 0, 0, 0, 2])]
    assert events == [None] * 7
    assert t.state == AlertState.PENDING


def test_k_of_n_raises_with_top_sensors_and_shares() -> None:
    t = tracker()
    events = [t.observe(score(i, v)) for i, v in enumerate([2, 0, 2, 2])]
    raised = events[-1]
    assert raised is not None
    assert raised.kind == "raised"
    assert raised.started_at == 0
    assert [s.sensor for s in raised.top_sensors] == ["vibration", "current"]
    assert abs(raised.top_sensors[0].share - 0.8) < 1e-6
    assert t.state == AlertState.FIRING


def test_m_clean_windows_resolve_with_the_same_id_and_a_dip_does_not() -> None:
    t = tracker()
    raised = [t.observe(score(i, 2)) for i in range(3)][-1]
    assert raised is not None
    # Three clean windows, then anomalous again: still the same episode.
    assert [t.observe(score(3 + i, v)) for i, v in enumerate([0, 0, 0, 2])] == [None] * 4
    events = [t.observe(score(7 + i, 0)) for i in range(4)]
    resolved = events[-1]
    assert resolved is not None
    assert resolved.kind == "resolved"
    assert resolved.alert_id == raised.alert_id
    assert resolved.ended_at == 7
    assert t.state == AlertState.NORMAL


def test_a_new_episode_gets_a_new_id_and_ids_are_stable_across_runs() -> None:
    def ids() -> list[str]:
        t = tracker(m=1)
        found = []
        for i, v in enumerate([2, 2, 2, 0, 2, 2, 2, 0]):
            event = t.observe(score(i, v))
            if event is not None and event.kind == "raised":
                found.append(event.alert_id)
        return found

    first = ids()
    assert len(set(first)) == 2
    assert ids() == first


def test_firing_alert_is_updated_every_interval_of_event_time() -> None:
    t = tracker(update_interval=10.0)
    events = [t.observe(score(i, 2)) for i in range(30)]
    kinds = [e.kind for e in events if e is not None]
    assert kinds == ["raised", "updated", "updated"]

"""What the status page reads (issue #19): the history ring, the kept windows, the latent
map of every model family, and the JSON of `/api/machines/<machine>` and its history."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from service.core.config import ModelSettings, Settings, ThresholdSettings
from service.core.metrics import Metrics
from service.core.types import Window
from service.scoring.detector import Detector
from service.scoring.latent import MAP_WINDOWS, LatentMap, fit_map, forward
from service.scoring.models import family_names
from service.stream.board import Board
from service.stream.detail import Detail, tiled
from service.stream.history import (
    ALERT_CONTEXT,
    HISTORY_POINTS,
    HISTORY_SPAN,
    RECENT_WINDOWS,
    MachineHistory,
)
from service.stream.machines import MachineRuntime

SENSORS = ("current", "vibration")
LENGTH = 8


def windows_at(ends: list[float], rng: np.random.Generator) -> list[Window]:
    return [
        Window("m", end, SENSORS, rng.normal(size=(LENGTH, 2)).astype(np.float32)) for end in ends
    ]


def fitted(kind: str = "dense") -> tuple[Detector, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(MAP_WINDOWS + 20)[:, None] + np.arange(LENGTH)[None, :]
    wave = np.sin(t / 7.0)
    train = np.stack([wave + 5, 2 * wave], axis=-1).astype(np.float32)
    train += rng.normal(scale=0.05, size=train.shape).astype(np.float32)
    settings = ModelSettings(kind=kind, epochs=1, batch_size=64)
    detector = Detector.new(SENSORS, LENGTH, settings)
    detector.fit(train, ThresholdSettings())
    return detector, train


def record(history: MachineHistory, detector: Detector, windows: list[Window]) -> None:
    scores, errors = detector.score_many(np.stack([w.values for w in windows]))
    history.record(detector, windows, scores, errors, [False] * len(windows))


def test_the_ring_keeps_each_buckets_highest_score_and_is_bounded() -> None:
    history = MachineHistory(period=1.0)
    detector, _ = fitted()
    bucket = HISTORY_SPAN / HISTORY_POINTS
    scores = np.array([1.0, 5.0, 2.0], np.float32)
    errors = np.array([[0.5, 0.5], [4.0, 1.0], [1.0, 1.0]], np.float32)
    windows = windows_at([0.0, 1.0, 2.0], np.random.default_rng(1))
    history.record(detector, windows, scores, errors, [False] * 3)
    snap = history.snapshot()
    assert snap.ts.tolist() == [1.0]  # one bucket, its peak
    assert snap.score.tolist() == [5.0]
    assert snap.shares[0].tolist() == pytest.approx([0.8, 0.2], abs=0.5 / 255)  # in 255ths
    # Two and a half times round the ring: it holds the newest HISTORY_POINTS buckets.
    ends = [bucket * (i + 1) for i in range(HISTORY_POINTS * 5 // 2)]
    many = windows_at(ends, np.random.default_rng(2))
    n = len(many)
    history.record(detector, many, np.ones(n, np.float32), np.ones((n, 2), np.float32), [False] * n)
    snap = history.snapshot()
    assert len(snap.ts) == HISTORY_POINTS
    assert snap.ts.tolist() == ends[-HISTORY_POINTS:]
    assert history.nbytes() == HISTORY_POINTS * (8 + 4 + 4 + len(SENSORS))


def test_kept_windows_are_spaced_bounded_and_give_an_alert_its_context() -> None:
    history = MachineHistory(period=1.0)
    detector, _ = fitted()
    rng = np.random.default_rng(3)
    record(history, detector, windows_at([float(t) for t in range(100)], rng))
    recent = history.snapshot().recent
    # One every half window (4 steps), at most RECENT_WINDOWS.
    assert [k.end_ts for k in recent] == [float(t) for t in range(100 - 4 * RECENT_WINDOWS, 100, 4)]
    history.alert_raised()
    firing = windows_at([float(t) for t in range(100, 120)], rng)
    scores, errors = detector.score_many(np.stack([w.values for w in firing]))
    history.record(detector, firing, scores, errors, [True] * len(firing))
    around = history.snapshot().around_alert
    assert [k.alert for k in around] == [False] * ALERT_CONTEXT + [True] * 5
    # Non-overlapping windows make one series: each step drawn once.
    series = tiled(recent, 1.0)
    assert [k.end_ts for k in series] == [float(t) for t in range(96, 99 - 4 * RECENT_WINDOWS, -8)][
        ::-1
    ]


def test_recent_windows_of_one_series_are_kept_exactly_as_the_rows_they_cover() -> None:
    """A machine's windows overlap: the kept ones, half a window apart, share half their
    rows, which the history holds once."""
    history = MachineHistory(period=1.0)
    detector, _ = fitted()
    series = np.random.default_rng(4).normal(size=(120, 2)).astype(np.float32)
    windows = [
        Window("m", float(t), SENSORS, series[t - LENGTH + 1 : t + 1]) for t in range(7, 120)
    ]
    record(history, detector, windows)
    recent = history.snapshot().recent
    assert len(recent) == RECENT_WINDOWS
    by_end = {w.end_ts: w.values for w in windows}
    assert all(np.array_equal(k.values, by_end[k.end_ts]) for k in recent)
    half = LENGTH // 2
    assert history.recent_nbytes() == (RECENT_WINDOWS * half + half) * len(SENSORS) * 4


@pytest.mark.parametrize("kind", family_names())
def test_every_family_gives_codes_and_a_stable_map(kind: str) -> None:
    detector, train = fitted(kind)
    recon, codes = forward(detector, train[:5])
    assert recon.shape == (5, LENGTH, 2)
    assert codes.ndim == 2
    assert len(codes) == 5
    latent_map = detector.latent_map
    assert latent_map is not None
    assert latent_map.train.shape == (MAP_WINDOWS, 2)
    # The map is fitted once: the same training windows project where it drew them.
    again = fit_map(detector, train)
    assert again is not None
    np.testing.assert_allclose(again.train, latent_map.train, atol=1e-4)
    # It travels with the model's meta.
    saved = Detector.from_state(detector.meta(), detector.model.state_dict())
    assert saved.latent_map is not None
    np.testing.assert_allclose(saved.latent_map.axes, latent_map.axes)
    assert LatentMap.from_json(latent_map.to_json()).train.shape == (MAP_WINDOWS, 2)


def test_a_model_saved_before_maps_still_loads() -> None:
    detector, _ = fitted()
    meta = detector.meta()
    del meta["latent_map"]
    assert Detector.from_state(meta, detector.model.state_dict()).latent_map is None


def test_the_detail_and_history_json() -> None:
    settings = Settings.model_validate({"window": {"length": LENGTH}})
    detector, train = fitted()
    detector.version = 1
    runtime = MachineRuntime("m", settings, SENSORS, None, detector)
    board = Board(Metrics(CollectorRegistry()))
    rng = np.random.default_rng(4)
    windows = windows_at([1000.0 + t for t in range(60)], rng)
    for w in windows:
        w.values[:] = train[int(rng.integers(len(train)))]
    record(runtime.history, detector, windows)
    runtime.history.note({"kind": "model", "at": 5.0, "outcome": "initial"})
    board.refresh({"m": runtime})
    detail = Detail(board)
    assert detail.machine("nope") is None
    assert detail.history("nope", 0.0) is None
    answer = detail.machine("m")
    assert answer is not None
    assert answer["machine"] == "m"
    assert answer["events"] == [{"kind": "model", "at": 5.0, "outcome": "initial"}]
    assert answer["history"]["points"] == HISTORY_POINTS
    history = detail.history("m", 0.0)
    assert history is not None
    assert set(history["scores"][0]) == {"ts", "score", "threshold"}
    assert [s["name"] for s in history["sensors"]] == list(SENSORS)
    points = history["sensors"][0]["points"]
    # Seen values are the windows' own; expected ones are close on normal windows.
    last = windows[56]  # the newest kept: one every half window
    assert [p["seen"] for p in points[-LENGTH:]] == pytest.approx(last.values[:, 0].tolist())
    assert [p["ts"] for p in points[-LENGTH:]] == [1056.0 - i for i in range(LENGTH - 1, -1, -1)]
    error = np.mean([abs(p["seen"] - p["expected"]) for p in points])
    assert error < 1.0
    kinds = {p["kind"] for p in history["latent"]}
    assert kinds == {"train", "recent"}
    later = detail.history("m", 1050.0)
    assert later is not None
    assert all(p["ts"] >= 1050.0 for p in later["scores"])
    assert all(p["ts"] is None or p["ts"] >= 1050.0 for p in later["latent"])
    assert len([p for p in later["latent"] if p["kind"] == "train"]) == MAP_WINDOWS

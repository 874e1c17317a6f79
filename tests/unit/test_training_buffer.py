"""The training buffer keeps its recent and reservoir windows in one array each, and
chooses exactly the windows it chose when it kept each window's own array."""

from __future__ import annotations

from collections import deque

import numpy as np

from service.core.config import FinetuneSettings
from service.core.types import FloatArray
from service.stream.training import TrainingBuffer


class ListBuffer:
    """The buffer's choice of windows as it was, with lists of references (no holding
    line, no episodes: admitted windows only)."""

    def __init__(self, settings: FinetuneSettings, seed: int = 0) -> None:
        self.s = settings
        self.rng = np.random.default_rng(seed)
        self.recent: deque[FloatArray] = deque(maxlen=settings.recent_windows)
        self.reservoir: list[FloatArray] = []
        self.seen_evicted = 0

    def admit(self, values: FloatArray) -> None:
        if len(self.recent) == self.recent.maxlen and self.s.reservoir_windows:
            self.keep(self.recent[0])
        self.recent.append(values)

    def keep(self, values: FloatArray) -> None:
        self.seen_evicted += 1
        if len(self.reservoir) < self.s.reservoir_windows:
            self.reservoir.append(values)
            return
        slot = int(self.rng.integers(self.seen_evicted))
        if slot < self.s.reservoir_windows:
            self.reservoir[slot] = values


def labelled(k: int) -> FloatArray:
    """A window that names itself: every value is `k`."""
    return np.full((20, 3), float(k), np.float32)


def labels(windows: list[FloatArray]) -> list[int]:
    return [int(w[0, 0]) for w in windows]


def test_it_keeps_the_windows_it_kept_as_lists() -> None:
    settings = FinetuneSettings(
        admit_every=1, margin_windows=0, recent_windows=30, reservoir_windows=12
    )
    buffer, reference = TrainingBuffer(settings, seed=5), ListBuffer(settings, seed=5)
    seed_windows = [labelled(-k) for k in range(1, 41)]
    buffer.seed(seed_windows)
    for values in seed_windows:
        reference.keep(values)
    for k in range(500):
        buffer.observe(labelled(k), score=0.1, threshold=1.0, alert_active=False)
        reference.admit(labelled(k))
        if k % 37 == 0:
            assert labels(buffer.recent) == labels(list(reference.recent))
            assert labels(buffer.reservoir) == labels(reference.reservoir)
    train, holdout = buffer.split(0.25)
    assert labels(holdout) == labels(list(reference.recent))[-8:]
    assert labels(train)[-12:] == labels(reference.reservoir)


def test_its_windows_are_one_array_a_set_and_copies() -> None:
    settings = FinetuneSettings(admit_every=1, margin_windows=0, recent_windows=20)
    buffer = TrainingBuffer(settings)
    admitted = [labelled(k) for k in range(60)]
    for values in admitted:
        buffer.observe(values, score=0.1, threshold=1.0, alert_active=False)
    assert len({id(w.base) for w in buffer.recent}) == 1
    assert len({id(w.base) for w in buffer.reservoir}) == 1
    assert all(w.base is not None for w in buffer.recent)
    admitted[-1][:] = -1.0  # the window's own array, written after admission
    assert labels(buffer.recent)[-1] == 59


def sliding(rows: FloatArray, starts: list[int], length: int = 20) -> list[FloatArray]:
    """Windows of `rows` at `starts`, each an array of its own, as the windower cuts them."""
    return [rows[i : i + length].copy() for i in starts]


def admit_all(buffer: TrainingBuffer, reference: ListBuffer, windows: list[FloatArray]) -> None:
    for values in windows:
        buffer.observe(values, score=0.1, threshold=1.0, alert_active=False)
        reference.admit(values)


def test_overlapping_windows_are_kept_as_the_rows_they_cover() -> None:
    settings = FinetuneSettings(
        admit_every=1, margin_windows=0, recent_windows=60, reservoir_windows=10
    )
    buffer, reference = TrainingBuffer(settings, seed=3), ListBuffer(settings, seed=3)
    rows = np.random.default_rng(0).normal(size=(400, 8)).astype(np.float32)
    admit_all(buffer, reference, sliding(rows, list(range(300))))
    assert np.array_equal(np.stack(buffer.recent), np.stack(list(reference.recent)))
    assert np.array_equal(np.stack(buffer.reservoir), np.stack(reference.reservoir))
    # 60 windows of 20 steps, one step apart: 79 rows, not 1,200.
    assert buffer._recent.rows == 60 + 19


def test_windows_with_breaks_between_them_are_kept_whole() -> None:
    settings = FinetuneSettings(
        admit_every=3, margin_windows=0, recent_windows=25, reservoir_windows=10
    )
    buffer = TrainingBuffer(settings, seed=7, stride=2)
    reference = ListBuffer(settings, seed=7)
    rows = np.random.default_rng(1).normal(size=(5_000, 4)).astype(np.float32)
    # Windows every 2 steps, with a jump now and then (a gap, or a restart after an alert).
    starts = [2 * k + 9 * (k // 40) + 5 * (k // 97) for k in range(1_500)]
    windows = sliding(rows, starts)
    for values in windows:
        buffer.observe(values, score=0.1, threshold=1.0, alert_active=False)
    admitted = windows[2::3]  # every admit_every-th, as the buffer counts
    for values in admitted:
        reference.admit(values)
    assert np.array_equal(np.stack(buffer.recent), np.stack(list(reference.recent)))
    assert np.array_equal(np.stack(buffer.reservoir), np.stack(reference.reservoir))
    _, holdout = buffer.split(0.25)
    assert np.array_equal(np.stack(holdout), np.stack(list(reference.recent)[-6:]))
    step = 3 * 2
    assert 25 * step + 20 - step < buffer._recent.rows <= 25 * 20, "grown, within the bound"

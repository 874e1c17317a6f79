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

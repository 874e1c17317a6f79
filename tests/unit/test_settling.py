"""The new-normal rule's steadiness: what settles and what never does."""

from __future__ import annotations

import numpy as np

from service.stream.settling import Settling

SPREAD = np.ones(3, np.float32)


def windows(levels: np.ndarray, noise: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(level + rng.normal(0, noise, (20, 3))).astype(np.float32) for level in levels]


def first_settled(settling: Settling, ws: list[np.ndarray]) -> float | None:
    for t, w in enumerate(ws):
        if settling.observe(float(t), w, SPREAD):
            return float(t)
    return None


def test_a_held_level_settles_after_the_configured_time() -> None:
    levels = np.tile([5.0, -2.0, 0.0], (1000, 1))
    settling = Settling(after=300.0, band=1.0, keep_every=10, keep=400)
    assert first_settled(settling, windows(levels, noise=1.0)) == 300.0
    assert len(settling.windows) == 31  # every 10th of the 301 windows of the stretch


def test_a_level_that_keeps_moving_never_settles() -> None:
    # One sensor creeps by a tenth of its spread a window: a fault that evolves.
    levels = np.zeros((1000, 3))
    levels[:, 1] = np.arange(1000) * 0.1
    settling = Settling(after=300.0, band=1.0, keep_every=10, keep=400)
    assert first_settled(settling, windows(levels, noise=0.3)) is None


def test_more_noise_at_a_held_level_is_still_steady() -> None:
    # Noise ten times the learning spread (a loose bearing rattles) around a held level.
    levels = np.tile([1.0, 1.0, 1.0], (1000, 1))
    settling = Settling(after=300.0, band=1.0, keep_every=10, keep=400)
    assert first_settled(settling, windows(levels, noise=10.0)) == 300.0

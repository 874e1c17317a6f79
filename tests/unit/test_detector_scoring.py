"""The detector's scoring options: the offset term, the drift widening of slow sensors, and
models saved before either option existed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.config import ModelSettings, ThresholdSettings
from service.detector import Detector, drift_ratio, sensor_errors
from service.types import FloatArray

WINDOW = 20
FLOOR = np.full(3, 1e-6)


def windows_of(rows: FloatArray, length: int = WINDOW) -> FloatArray:
    return np.stack([rows[i : i + length] for i in range(len(rows) - length + 1)])


def test_a_held_offset_counts_window_length_times_more_than_its_energy() -> None:
    residual = torch.full((1, WINDOW, 2), 0.5)
    residual[0, :, 1] = torch.tensor([0.5, -0.5] * (WINDOW // 2))  # same energy, no offset
    plain = sensor_errors(residual, offset_weight=0.0)
    weighted = sensor_errors(residual, offset_weight=0.1)
    np.testing.assert_allclose(plain, [[0.25, 0.25]])
    np.testing.assert_allclose(weighted, [[0.25 + 0.1 * WINDOW * 0.25, 0.25]], rtol=1e-6)


def test_white_noise_gets_the_same_expected_error_from_either_term() -> None:
    residual = torch.randn(4000, WINDOW, 1, generator=torch.Generator().manual_seed(0))
    plain = sensor_errors(residual, 0.0).mean()
    offset_only = sensor_errors(residual, 1.0).mean() - plain
    assert plain == pytest.approx(1.0, rel=0.02)
    assert offset_only == pytest.approx(1.0, rel=0.1)


def test_a_wandering_sensor_among_noisy_ones_is_widened() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(400)
    wander = 2.0 * np.sin(t / 60) + 0.05 * rng.normal(size=400)
    rows = np.stack([rng.normal(size=400), rng.normal(size=400), wander], axis=1)
    ratio = drift_ratio(windows_of(rows), FLOOR)
    assert ratio[:2].max() < 2.0
    assert ratio[2] > 100.0


def test_sensors_that_all_follow_one_load_are_not_widened() -> None:
    # The whole machine wanders with its load: the model learns that, it is not drift.
    rng = np.random.default_rng(2)
    load = np.repeat(rng.uniform(0.5, 1.0, 20), 20)
    rows = np.stack([10 * load, 3 * load, 5 * load], axis=1) + 0.05 * rng.normal(size=(400, 3))
    ratio = drift_ratio(windows_of(rows), FLOOR)
    np.testing.assert_allclose(ratio, 1.0, atol=0.5)


def test_widening_is_capped() -> None:
    rng = np.random.default_rng(3)
    ramp = np.linspace(0.0, 50.0, 400) + 0.01 * rng.normal(size=400)
    rows = np.stack([rng.normal(size=400), rng.normal(size=400), ramp], axis=1)
    windows = windows_of(rows).astype(np.float32)
    capped = Detector.new(
        ("a", "b", "c"), WINDOW, ModelSettings(epochs=1, drift_widening=0.5, drift_widening_max=4)
    )
    capped.fit(windows, ThresholdSettings())
    plain = Detector.new(("a", "b", "c"), WINDOW, ModelSettings(epochs=1, drift_widening=0))
    plain.fit(windows, ThresholdSettings())
    np.testing.assert_allclose(capped.std / plain.std, [1.0, 1.0, 4.0], rtol=0.1)


def test_a_model_saved_before_the_options_scores_as_it_was_calibrated() -> None:
    detector = Detector.new(("a", "b"), WINDOW, ModelSettings(epochs=1, offset_weight=0.0))
    meta = detector.meta()
    for option in ("offset_weight", "drift_widening", "drift_widening_max"):
        del meta["model"][option]
    restored = Detector.from_state(meta, detector.model.state_dict())
    assert restored.settings.offset_weight == 0.0
    assert restored.settings.drift_widening == 0.0
    probe = np.random.default_rng(4).normal(size=(5, WINDOW, 2)).astype(np.float32)
    np.testing.assert_array_equal(restored.score_many(probe)[0], detector.score_many(probe)[0])

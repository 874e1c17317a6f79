"""The detector's scoring options: the offset term, the drift widening of slow sensors, the
discount of held offsets on sensors whose level wandered while learning, and models saved
before these options existed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.core.config import ModelSettings, ThresholdSettings
from service.core.types import FloatArray
from service.scoring.detector import Detector, level_wander, relative_to, sensor_errors

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
    wander = level_wander(windows_of(rows), FLOOR)
    ratio = relative_to(wander, float(wander.min()))
    assert ratio[:2].max() < 2.0
    assert ratio[2] > 100.0


def test_sensors_that_all_follow_one_load_are_not_widened() -> None:
    # The whole machine wanders with its load: the model learns that, it is not drift.
    rng = np.random.default_rng(2)
    load = np.repeat(rng.uniform(0.5, 1.0, 20), 20)
    rows = np.stack([10 * load, 3 * load, 5 * load], axis=1) + 0.05 * rng.normal(size=(400, 3))
    wander = level_wander(windows_of(rows), FLOOR)
    np.testing.assert_allclose(relative_to(wander, float(wander.min())), 1.0, atol=0.5)
    np.testing.assert_allclose(relative_to(wander, float(np.median(wander))), 1.0, atol=0.5)


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
    for option in ("offset_weight", "drift_widening", "drift_widening_max", "offset_discount"):
        del meta["model"][option]
    del meta["held_weight"]
    restored = Detector.from_state(meta, detector.model.state_dict())
    assert restored.settings.offset_weight == 0.0
    assert restored.settings.drift_widening == 0.0
    assert restored.settings.offset_discount == 0.0
    assert restored.held_weight.tolist() == [1.0, 1.0]
    probe = np.random.default_rng(4).normal(size=(5, WINDOW, 2)).astype(np.float32)
    np.testing.assert_array_equal(restored.score_many(probe)[0], detector.score_many(probe)[0])


def test_held_weights_scale_only_the_held_offset() -> None:
    residual = torch.full((1, WINDOW, 2), 0.5)
    residual[0, ::2, :] = -0.1  # each sensor: an offset of 0.2 and variance 0.09 around it
    plain = sensor_errors(residual, offset_weight=0.0)
    halved = sensor_errors(residual, 0.0, np.array([1.0, 0.5], np.float32))
    np.testing.assert_allclose(plain, [[0.13, 0.13]], rtol=1e-5)
    np.testing.assert_allclose(halved, [[0.13, 0.09 + 0.5 * 0.04]], rtol=1e-5)
    weighted = sensor_errors(residual, 0.1, np.array([1.0, 0.5], np.float32))
    factor = 1 + 0.1 * WINDOW
    np.testing.assert_allclose(weighted, [[0.09 + factor * 0.04, 0.09 + factor * 0.02]], rtol=1e-5)


def test_a_sensor_whose_level_wandered_while_learning_has_its_held_offsets_discounted() -> None:
    # A temperature that drifts by degrees in normal operation: a held offset of it says
    # little, while one of a sensor that held its level (a flow) is what a closed valve does.
    rng = np.random.default_rng(5)
    t = np.arange(400)
    temperature = 3.0 * np.sin(t / 80) + 0.1 * rng.normal(size=400)
    rows = np.stack([rng.normal(size=400), rng.normal(size=400), temperature], axis=1)
    rows = rows.astype(np.float32)
    detector = Detector.new(("flow", "pressure", "temperature"), WINDOW, ModelSettings(epochs=1))
    detector.fit(windows_of(rows), ThresholdSettings())
    np.testing.assert_allclose(detector.held_weight[:2], 1.0, atol=0.3)
    assert detector.held_weight[2] < 0.01
    undiscounted = Detector.new(("a", "b", "c"), WINDOW, ModelSettings(epochs=1, offset_discount=0))
    undiscounted.fit(windows_of(rows), ThresholdSettings())
    assert undiscounted.held_weight.tolist() == [1.0, 1.0, 1.0]


def test_held_weights_survive_a_save_and_a_clone() -> None:
    rng = np.random.default_rng(6)
    rows = np.stack([rng.normal(size=300), np.linspace(0, 30, 300)], axis=1).astype(np.float32)
    detector = Detector.new(("a", "b"), WINDOW, ModelSettings(epochs=1))
    detector.fit(windows_of(rows), ThresholdSettings())
    restored = Detector.from_state(detector.meta(), detector.model.state_dict())
    np.testing.assert_array_equal(restored.held_weight, detector.held_weight)
    clone = detector.clone()
    np.testing.assert_array_equal(clone.held_weight, detector.held_weight)
    assert clone.held_weight is not detector.held_weight

"""The contract every autoencoder family passes, plain and with each training option."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from service.config import ModelSettings, ThresholdSettings
from service.detector import Detector, train_model
from service.models import family_names
from service.types import FloatArray

WINDOW = 20
SENSORS = ("current", "pressure", "temperature", "vibration", "flow")
OPTIONS = {"plain": {}, "denoising": {"denoise_std": 0.1}, "sparse": {"sparse_l1": 1e-3}}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def normal_rows(n: int, seed: int) -> FloatArray:
    rng = np.random.default_rng(seed)
    load = np.repeat(rng.choice([0.6, 0.8, 1.0], size=n // 40 + 1), 40)[:n]
    rows = np.stack([10 * load, 3 * load**2, 40 + 30 * load, 0.5 + 0.3 * load, 20 * load], axis=1)
    return (rows + rng.normal(0, 0.02, rows.shape) * rows.std(axis=0)).astype(np.float32)


def windows(rows: FloatArray) -> FloatArray:
    return np.stack([rows[i : i + WINDOW] for i in range(len(rows) - WINDOW + 1)])


def settings(option: str) -> ModelSettings:
    return ModelSettings.model_validate({"epochs": 25, "seed": 3, **OPTIONS[option]})


def fitted(kind: str, option: str) -> tuple[Detector, FloatArray]:
    s = settings(option).model_copy(update={"kind": kind})
    detector = Detector.new(SENSORS, WINDOW, s)
    report = detector.fit(windows(normal_rows(420, seed=1)), ThresholdSettings())
    return detector, report.holdout_scores


CASES = list(itertools.product(family_names(), OPTIONS))


@pytest.fixture(scope="module", params=CASES, ids=[f"{k}-{o}" for k, o in CASES])
def case(request: pytest.FixtureRequest) -> tuple[str, str, Detector, FloatArray]:
    kind, option = request.param
    detector, holdout = fitted(kind, option)
    return kind, option, detector, holdout


def anomalies() -> FloatArray:
    test = windows(normal_rows(200, seed=2))[::20].copy()
    tripled = test.copy()
    tripled[:, :, 3] *= 3  # vibration tripled
    broken = test.copy()
    broken[:, :, 4] *= 0.3  # flow down while pressure and load stay: a closing valve
    broken[:, :, 0] *= 0.7  # and the current drops with it
    return np.concatenate([tripled, broken])


def test_anomalies_score_above_normal(case: tuple[str, str, Detector, FloatArray]) -> None:
    _, _, detector, holdout = case
    normal_p99 = float(np.quantile(holdout, 0.99))
    scores, errors = detector.score_many(anomalies())
    assert scores.min() > normal_p99
    half = len(scores) // 2
    assert (errors[:half].argmax(axis=1) == 3).all()  # vibration named for its own fault


def test_batch_of_one_equals_batch_of_many(case: tuple[str, str, Detector, FloatArray]) -> None:
    detector = case[2]
    batch = windows(normal_rows(80, seed=4))
    together = detector.score_many(batch)[0]
    alone = np.concatenate([detector.score_many(batch[i : i + 1])[0] for i in range(len(batch))])
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-7)


def test_clone_is_independent(case: tuple[str, str, Detector, FloatArray]) -> None:
    detector = case[2]
    probe = windows(normal_rows(60, seed=5))
    before = detector.score_many(probe)[0]
    clone = detector.clone()
    shifted = probe + np.float32(5.0)
    train_model(clone.model, clone.scaled(shifted), detector.settings, epochs=3)
    assert not np.allclose(clone.score_many(probe)[0], before)
    np.testing.assert_array_equal(detector.score_many(probe)[0], before)


def test_deterministic_under_a_seed(case: tuple[str, str, Detector, FloatArray]) -> None:
    kind, option, detector, _ = case
    again, _ = fitted(kind, option)
    probe = windows(normal_rows(60, seed=6))
    np.testing.assert_array_equal(again.score_many(probe)[0], detector.score_many(probe)[0])


def test_weights_round_trip_bit_for_bit(
    case: tuple[str, str, Detector, FloatArray], tmp_path: Path
) -> None:
    detector = case[2]
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in detector.model.state_dict().items()}, str(path))
    restored = Detector.new(SENSORS, WINDOW, detector.settings)
    restored.model.load_state_dict(load_file(str(path)))
    restored.mean, restored.std = detector.mean.copy(), detector.std.copy()
    restored.threshold = detector.threshold
    for name, tensor in detector.model.state_dict().items():
        assert torch.equal(tensor, restored.model.state_dict()[name]), name
    probe = windows(normal_rows(60, seed=7))
    np.testing.assert_array_equal(restored.score_many(probe)[0], detector.score_many(probe)[0])

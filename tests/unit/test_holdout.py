"""The windows that calibrate a threshold share no time step with the training windows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from service.core.config import FinetuneSettings, ModelSettings, ThresholdSettings
from service.core.types import FloatArray
from service.scoring import detector as detector_module
from service.scoring.detector import Detector, split_holdout
from service.stream.training import TrainingBuffer


def step_windows(n_steps: int, length: int, stride: int) -> FloatArray:
    """Windows whose one sensor is the grid step's index, so a window names its steps."""
    steps = np.arange(n_steps, dtype=np.float32)
    starts = range(0, n_steps - length + 1, stride)
    return np.stack([steps[i : i + length] for i in starts])[:, :, None]


def steps_of(windows: FloatArray | list[FloatArray]) -> set[int]:
    return {int(v) for v in np.stack(windows)[:, :, 0].ravel()}


@pytest.mark.parametrize(
    ("n_steps", "length", "stride", "share"),
    [(329, 30, 1, 0.25), (269, 20, 1, 0.25), (5000, 30, 1, 0.25), (1300, 30, 4, 0.25)],
)
def test_held_out_windows_share_no_step_with_training_windows(
    n_steps: int, length: int, stride: int, share: float
) -> None:
    windows = step_windows(n_steps, length, stride)
    train, holdout = split_holdout(windows, share)
    assert steps_of(train).isdisjoint(steps_of(holdout))
    assert len(holdout) == round(len(windows) * share)
    # The gaps cost no more windows than the holdout: most windows still train.
    assert len(train) >= len(windows) - 2 * len(holdout)


def test_the_newest_windows_are_held_out() -> None:
    windows = step_windows(329, 30, 1)
    train, holdout = split_holdout(windows, 0.25)
    assert max(steps_of(train)) < min(steps_of(holdout))
    assert max(steps_of(holdout)) == 328


def test_threshold_comes_from_windows_the_calibrating_model_never_saw(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first training sees only the older windows; the second (the model kept) all."""
    trained_on: list[set[int]] = []
    real_train = detector_module.train_model

    def recording(model: Any, x: Any, *args: Any, **kwargs: Any) -> float:
        steps = x[:, :, 0].numpy().ravel() * detector.std[0] + detector.mean[0]
        trained_on.append({round(float(v)) for v in steps})
        return real_train(model, x, *args, **kwargs)

    windows = step_windows(200, 10, 1)
    monkeypatch.setattr(detector_module, "train_model", recording)
    detector = Detector.new(("step",), 10, ModelSettings(epochs=1))
    report = detector.fit(windows, ThresholdSettings(holdout=0.25))
    _, holdout = split_holdout(windows, 0.25)
    first, kept = trained_on
    assert first.isdisjoint(steps_of(holdout))
    assert kept == steps_of(windows)
    assert (report.windows_train, report.windows_holdout) == (len(windows), len(holdout))
    assert len(report.holdout_scores) == len(holdout)
    assert np.isfinite(report.holdout_scores).all()


def test_too_few_windows_for_a_full_gap_is_logged() -> None:
    windows = step_windows(49, 30, 1)  # 20 windows of 30 steps
    with capture_logs() as logs:
        train, holdout = split_holdout(windows, 0.25)
    assert len(train) >= len(holdout) >= 1
    assert [e["event"] for e in logs] == ["holdout_overlaps_training"]


def test_fine_tune_holdout_shares_no_step_with_its_training_windows() -> None:
    settings = FinetuneSettings(admit_every=3, margin_windows=0, recent_windows=100)
    buffer = TrainingBuffer(settings)
    for window in step_windows(600, 30, 1):
        buffer.observe(window, score=0.1, threshold=1.0, alert_active=False)
    train, holdout = buffer.split(0.25)
    assert len(holdout) == 25
    assert steps_of(train).isdisjoint(steps_of(holdout))

"""`Detector`: scaler + autoencoder + threshold for one machine.

The only torch user outside `models/` and `finetune.py`. Scores are the mean squared
reconstruction error in scaled units; per-sensor errors say which sensors drove a score.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from threading import Event
from typing import Any

import numpy as np
import torch

from service.config import ModelSettings, ThresholdSettings
from service.models import AEOutput, Autoencoder, build_model
from service.threshold import calibrate
from service.types import FloatArray

# A sensor that was constant while learning would otherwise divide by ~0 and turn any
# later wiggle of its noise into a huge error.
MIN_STD_FRACTION = 1e-3
MIN_STD = 1e-6
# A model saved before a scoring option existed was calibrated without it: it keeps
# scoring as it was calibrated, whatever today's default is.
LEGACY_SCORING: dict[str, float] = {"offset_weight": 0.0, "drift_widening": 0.0}


@dataclass
class FitReport:
    windows_train: int
    windows_holdout: int
    final_loss: float
    threshold: float
    holdout_scores: FloatArray = field(repr=False)


@dataclass
class Detector:
    """Scores windows `[batch, time, sensors]` of one machine."""

    sensors: tuple[str, ...]
    window: int
    settings: ModelSettings
    model: Autoencoder
    mean: FloatArray
    std: FloatArray
    threshold: float = float("inf")
    version: int = 0

    @classmethod
    def new(cls, sensors: tuple[str, ...], window: int, settings: ModelSettings) -> Detector:
        torch.manual_seed(settings.seed)
        model = build_model(settings.kind, window, len(sensors), dict(settings.params))
        n = len(sensors)
        return cls(
            sensors, window, settings, model, np.zeros(n, np.float32), np.ones(n, np.float32)
        )

    @classmethod
    def from_state(cls, meta: Mapping[str, Any], weights: Mapping[str, torch.Tensor]) -> Detector:
        """The inverse of `meta()` and `model.state_dict()`: the detector as it was saved.
        Raises `ValueError`, `KeyError` or `RuntimeError` (a tensor missing, extra or of
        the wrong shape) when the two do not make one detector."""
        settings = ModelSettings.model_validate({**LEGACY_SCORING, **meta["model"]})
        sensors = tuple(str(s) for s in meta["sensors"])
        window = int(meta["window"])
        model = build_model(settings.kind, window, len(sensors), dict(settings.params))
        model.load_state_dict(weights)
        model.eval()
        mean = np.asarray(meta["mean"], dtype=np.float32)
        std = np.asarray(meta["std"], dtype=np.float32)
        if mean.shape != (len(sensors),) or std.shape != (len(sensors),):
            raise ValueError(f"scaler of {mean.shape}/{std.shape} for {len(sensors)} sensors")
        threshold = float(meta["threshold"])
        return cls(sensors, window, settings, model, mean, std, threshold, int(meta["version"]))

    def fit(
        self, windows: FloatArray, threshold: ThresholdSettings, cancel: Event | None = None
    ) -> FitReport:
        """Fits scaler and model on normal `windows`, then the threshold on held-out ones.
        Setting `cancel` stops the training at the next batch with `FitCancelledError`."""
        train, holdout = split_holdout(windows, threshold.holdout)
        self._fit_scaler(train)
        x = self.scaled(train)
        loss = train_model(self.model, x, self.settings, self.settings.epochs, cancel)
        holdout_scores, _ = self.score_many(holdout)
        self.threshold = calibrate(holdout_scores, threshold)
        return FitReport(len(train), len(holdout), loss, self.threshold, holdout_scores)

    def score_many(self, windows: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Scores `[batch]` and per-sensor errors `[batch, sensors]`, in one model call."""
        x = self.scaled(windows)
        self.model.eval()
        with torch.inference_mode():
            residual = self.model(x).recon - x
        errors = sensor_errors(residual, self.settings.offset_weight)
        return errors.mean(axis=1), errors

    def clone(self) -> Detector:
        """An independent copy (its own weights), e.g. for the fine-tuner to train."""
        return Detector(
            self.sensors,
            self.window,
            self.settings,
            copy.deepcopy(self.model),
            self.mean.copy(),
            self.std.copy(),
            self.threshold,
            self.version,
        )

    def meta(self) -> dict[str, Any]:
        """Everything but the weights, as JSON-able values."""
        return {
            "sensors": list(self.sensors),
            "window": self.window,
            "model": self.settings.model_dump(),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "threshold": self.threshold,
            "version": self.version,
        }

    def _fit_scaler(self, windows: FloatArray) -> None:
        rows = windows.reshape(-1, windows.shape[-1]).astype(np.float64)
        mean = rows.mean(axis=0)
        floor = np.maximum(np.abs(mean) * MIN_STD_FRACTION, MIN_STD)
        std = np.maximum(rows.std(axis=0), floor)
        widening = np.minimum(
            drift_ratio(windows, floor) ** self.settings.drift_widening,
            self.settings.drift_widening_max,
        )
        self.mean = mean.astype(np.float32)
        self.std = (std * widening).astype(np.float32)

    def scaled(self, windows: FloatArray) -> torch.Tensor:
        """Windows in this detector's scaled units, as the model sees them."""
        scaled = (np.asarray(windows, dtype=np.float32) - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32))


def sensor_errors(residual: torch.Tensor, offset_weight: float) -> FloatArray:
    """Per window and sensor `[batch, sensors]`: the mean squared residual, plus
    `offset_weight` times the squared standard score of the residual's mean. White noise of
    variance s^2 adds s^2 to either term; an offset d held over L steps adds d^2 to the
    first and L d^2 to the second, so a held shift stands out of the noise."""
    squared = residual.square().mean(dim=1)
    if offset_weight > 0:
        offset = residual.mean(dim=1).square() * residual.shape[1]
        squared = squared + offset_weight * offset
    return squared.numpy().astype(np.float32, copy=False)


def drift_ratio(windows: FloatArray, floor: FloatArray) -> FloatArray:
    """Per sensor, at least 1: how much more the windows' means spread than the sensor's
    noise alone would make them (its mean within-window variance / window length), relative
    to the machine's steadiest sensor. About 1 for a sensor that is noise around a level;
    large for a slow state that wanders (a temperature). Relative, because a machine whose
    sensors all follow its load wanders as a whole: that is operation the model learns, not
    drift, and its scales stay as they are.

    >>> rng = np.random.default_rng(0)
    >>> noise = rng.normal(size=(400, 1))
    >>> ramp = np.linspace(0, 20, 400)[:, None] + 0.1 * rng.normal(size=(400, 1))
    >>> rows = np.hstack([noise, ramp])
    >>> windows = np.stack([rows[i : i + 30] for i in range(371)])
    >>> noise_ratio, ramp_ratio = drift_ratio(windows, np.full(2, 1e-6))
    >>> bool(noise_ratio < 1.5), bool(ramp_ratio > 1000)
    (True, True)
    """
    values = np.asarray(windows, dtype=np.float64)
    length = values.shape[1]
    noise = np.maximum(values.var(axis=1).mean(axis=0), np.square(floor)) / length
    ratio = values.mean(axis=1).var(axis=0) / noise
    steadiest = max(float(ratio.min()), 1.0)
    relative: FloatArray = np.maximum(ratio / steadiest, 1.0)
    return relative


def split_holdout(windows: FloatArray, share: float) -> tuple[FloatArray, FloatArray]:
    """Every k-th window is held out, so both parts cover all operating points seen."""
    step = max(2, round(1 / share))
    mask = np.zeros(len(windows), dtype=bool)
    mask[step - 1 :: step] = True
    return windows[~mask], windows[mask]


class FitCancelledError(Exception):
    """Training stopped because the daemon is shutting down."""


def train_model(
    model: Autoencoder,
    x: torch.Tensor,
    settings: ModelSettings,
    epochs: int,
    cancel: Event | None = None,
) -> float:
    """Adam on reconstruction loss; the denoising and sparse options apply to every family.
    Returns the last epoch's mean loss."""
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    model.train()
    epoch_loss = float("nan")
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), settings.batch_size):
            if cancel is not None and cancel.is_set():
                raise FitCancelledError
            batch = x[order[start : start + settings.batch_size]]
            loss = reconstruction_loss(model, batch, settings, generator)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        epoch_loss = total / len(x)
    model.eval()
    return epoch_loss


def reconstruction_loss(
    model: Autoencoder, clean: torch.Tensor, settings: ModelSettings, generator: torch.Generator
) -> torch.Tensor:
    noisy = clean
    if settings.denoise_std > 0:
        noise = torch.randn(clean.shape, generator=generator) * settings.denoise_std
        noisy = clean + noise
    out: AEOutput = model(noisy)
    loss: torch.Tensor = (out.recon - clean).square().mean() + out.extra_loss
    if settings.sparse_l1 > 0:
        loss = loss + settings.sparse_l1 * out.code.abs().mean()
    return loss

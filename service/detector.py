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
        settings = ModelSettings.model_validate(meta["model"])
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
            recon = self.model(x).recon
            errors = sensor_errors(recon, x).numpy().astype(np.float32, copy=False)
        return window_scores(errors), errors

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
        self.mean = mean.astype(np.float32)
        self.std = np.maximum(rows.std(axis=0), floor).astype(np.float32)

    def scaled(self, windows: FloatArray) -> torch.Tensor:
        """Windows in this detector's scaled units, as the model sees them."""
        scaled = (np.asarray(windows, dtype=np.float32) - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32))


def sensor_errors(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sensor mean squared error over a window's time axis: `[..., time, sensors]` ->
    `[..., sensors]` (shared with `service.stacked`, which scores many machines at once)."""
    return (recon - x).square().mean(dim=-2)


def window_scores(errors: FloatArray) -> FloatArray:
    """A window's score from its per-sensor errors `[..., sensors]`."""
    scores: FloatArray = errors.mean(axis=-1)
    return scores


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

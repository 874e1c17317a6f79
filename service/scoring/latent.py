"""What a detector's model says of windows beyond their scores, for the status page: the
**expected** signal (the reconstruction, in the sensors' own units) and the latent
**code**, projected onto a 2-D map fitted once per model on its training windows.

The map is PCA of the codes (an SVD in numpy): linear, so a window's place on it depends
on its code alone, and fitted with the model, so training points stay where they are
while the page is open. Every family exposes its bottleneck as `AEOutput.code` (the VAE's
mean, the convolutional code flattened).

These run on the HTTP request's thread for one machine's few windows, read-only, never on
the pipeline's (`service.stream.detail`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from service.core.types import FloatArray
from service.scoring.models import Autoencoder

# Training windows sampled to fit the map and drawn on it: enough to show the operating
# states the model learnt, few enough to keep a saved model's meta small (2 floats each).
MAP_WINDOWS = 200


class Scaled(Protocol):
    """What of a detector (`service.scoring.detector.Detector`) these need."""

    mean: FloatArray
    std: FloatArray

    @property
    def model(self) -> Autoencoder: ...

    def scaled(self, windows: FloatArray) -> torch.Tensor: ...


@dataclass(frozen=True)
class LatentMap:
    """`(code - mean) @ axes`: the codes' two principal axes, and the training windows'
    points on them."""

    mean: FloatArray  # [code]
    axes: FloatArray  # [code, 2]
    train: FloatArray  # [n, 2]

    def project(self, codes: FloatArray) -> FloatArray:
        """`[n, code]` -> `[n, 2]`."""
        points: FloatArray = ((codes - self.mean) @ self.axes).astype(np.float32)
        return points

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": self.mean.tolist(),
            "axes": self.axes.tolist(),
            "train": np.round(self.train, 5).tolist(),
        }

    @classmethod
    def from_json(cls, saved: Mapping[str, Any]) -> LatentMap:
        mean = np.asarray(saved["mean"], dtype=np.float32)
        axes = np.asarray(saved["axes"], dtype=np.float32).reshape(len(mean), 2)
        train = np.asarray(saved["train"], dtype=np.float32).reshape(-1, 2)
        return cls(mean, axes, train)


def forward(detector: Scaled, windows: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Reconstructions `[n, time, sensors]` in the sensors' units and codes `[n, code]`,
    in one model call without gradients."""
    x = detector.scaled(windows)
    with torch.inference_mode():
        out = detector.model(x)
    recon = out.recon.numpy() * detector.std + detector.mean
    return recon.astype(np.float32), out.code.reshape(len(x), -1).numpy().astype(np.float32)


def fit_map(detector: Scaled, windows: FloatArray | Sequence[FloatArray]) -> LatentMap | None:
    """PCA of the codes of up to `MAP_WINDOWS` windows taken evenly from `windows` (the
    model's training windows); None with fewer than 3 (no plane to fit)."""
    n = len(windows)
    if n < 3:
        return None
    picked = np.unique(np.linspace(0, n - 1, min(n, MAP_WINDOWS)).round().astype(int))
    sample = np.stack([windows[int(i)] for i in picked]).astype(np.float32)
    _, codes = forward(detector, sample)
    mean = codes.mean(axis=0)
    centred = (codes - mean).astype(np.float64)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = np.zeros((codes.shape[1], 2), np.float64)
    # An axis's sign is arbitrary: its largest loading is made positive, so a refit of
    # the same codes draws the same map.
    for j, axis in enumerate(vt[:2]):
        axes[:, j] = axis if axis[np.abs(axis).argmax()] >= 0 else -axis
    result = LatentMap(mean, axes.astype(np.float32), np.zeros((0, 2), np.float32))
    return LatentMap(result.mean, result.axes, result.project(codes))

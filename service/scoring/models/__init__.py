"""Autoencoder families and the registry that builds them by name.

Each family is a config dataclass (its first two fields are `window` and `n_sensors`) and an
`Autoencoder` whose `forward(x[batch, time, sensors])` returns an `AEOutput`. Denoising and
sparse are training options of any family (`ModelSettings.denoise_std` and
`sparse_l1`, applied by `service.scoring.detector.train_model`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from service.scoring.models.base import AEOutput, Autoencoder
from service.scoring.models.conv import ConvAE, ConvConfig
from service.scoring.models.dense import DenseAE, DenseConfig
from service.scoring.models.lstm import LstmAE, LstmConfig
from service.scoring.models.vae import VAE, VaeConfig

# name -> (config class, module class)
REGISTRY: dict[str, tuple[type[Any], type[Autoencoder]]] = {
    "conv": (ConvConfig, ConvAE),
    "dense": (DenseConfig, DenseAE),
    "lstm": (LstmConfig, LstmAE),
    "vae": (VaeConfig, VAE),
}


def family_names() -> list[str]:
    return sorted(REGISTRY)


def build_model(kind: str, window: int, n_sensors: int, params: dict[str, Any]) -> Autoencoder:
    """Builds family `kind`; `params` may set any field of its config, others are refused."""
    if kind not in REGISTRY:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {family_names()}")
    config_cls, module_cls = REGISTRY[kind]
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(params) - known
    if unknown:
        raise ValueError(f"model {kind!r} has no parameter(s) {sorted(unknown)}")
    return module_cls(config_cls(window=window, n_sensors=n_sensors, **params))


__all__ = ["REGISTRY", "AEOutput", "Autoencoder", "build_model", "family_names"]

"""Dense (fully connected) autoencoder over a flattened window."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from service.scoring.models.base import AEOutput, Autoencoder


@dataclass(frozen=True)
class DenseConfig:
    window: int
    n_sensors: int
    hidden: int = 64
    code: int = 8


class DenseAE(Autoencoder):
    def __init__(self, cfg: DenseConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_in = cfg.window * cfg.n_sensors
        self.encoder = nn.Sequential(
            nn.Linear(n_in, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.code)
        )
        self.decoder = nn.Sequential(
            nn.Linear(cfg.code, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, n_in)
        )

    def forward(self, x: torch.Tensor) -> AEOutput:
        code = self.encoder(x.flatten(1))
        recon = self.decoder(code).view_as(x)
        return AEOutput(recon, code, x.new_zeros(()))

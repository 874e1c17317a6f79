"""1-D convolutional autoencoder: convolutions over time, one channel per sensor."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from service.models.base import AEOutput, Autoencoder


@dataclass(frozen=True)
class ConvConfig:
    window: int
    n_sensors: int
    channels: int = 32
    code: int = 16
    kernel: int = 5


class ConvAE(Autoencoder):
    def __init__(self, cfg: ConvConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, k, pad = cfg.channels, cfg.kernel, cfg.kernel // 2
        self.encoder = nn.Sequential(
            nn.Conv1d(cfg.n_sensors, c, k, stride=2, padding=pad),
            nn.GELU(),
            nn.Conv1d(c, cfg.code, k, stride=2, padding=pad),
            nn.GELU(),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose1d(cfg.code, c, 4, stride=2, padding=1),
            nn.GELU(),
            nn.ConvTranspose1d(c, c, 4, stride=2, padding=1),
            nn.GELU(),
            nn.Conv1d(c, cfg.n_sensors, k, padding=pad),
        )

    def forward(self, x: torch.Tensor) -> AEOutput:
        code = self.encoder(x.transpose(1, 2))
        out = self.decoder(code)
        # Stride 2 twice rounds odd lengths: bring the output back to the window's length.
        if out.shape[-1] != x.shape[1]:
            out = functional.interpolate(out, size=x.shape[1], mode="linear", align_corners=False)
        return AEOutput(out.transpose(1, 2), code.flatten(1), x.new_zeros(()))

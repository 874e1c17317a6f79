"""1-D convolutional autoencoder: convolutions over time, one input channel per sensor."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from service.scoring.models.base import AEOutput, Autoencoder


@dataclass(frozen=True)
class ConvConfig:
    window: int
    n_sensors: int
    channels: int = 32
    code: int = 16  # channels of the code, at a quarter of the window's time resolution
    kernel: int = 5

    def __post_init__(self) -> None:
        if self.kernel % 2 == 0:
            raise ValueError("conv kernel must be odd so that padding keeps the time axis centred")


class ConvAE(Autoencoder):
    """Two stride-2 convolutions down, two stride-2 transposed convolutions up.

    Each stride-2 step maps a length `L` to `ceil(L / 2)`, and each transposed step doubles
    it, so the decoder returns `4 * ceil(window / 4) >= window` steps for any window; the
    surplus at the end is cropped. Cropping, unlike resampling, keeps every output step
    aligned with the input step it reconstructs.
    """

    def __init__(self, cfg: ConvConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, k, pad = cfg.channels, cfg.kernel, cfg.kernel // 2
        self.encoder = nn.Sequential(
            nn.Conv1d(cfg.n_sensors, c, k, stride=2, padding=pad),
            nn.GELU(),
            nn.Conv1d(c, cfg.code, k, stride=2, padding=pad),
        )
        self.decoder = nn.Sequential(
            nn.GELU(),
            nn.ConvTranspose1d(cfg.code, c, 4, stride=2, padding=1),
            nn.GELU(),
            nn.ConvTranspose1d(c, c, 4, stride=2, padding=1),
            nn.GELU(),
            nn.Conv1d(c, cfg.n_sensors, k, padding=pad),
        )

    def forward(self, x: torch.Tensor) -> AEOutput:
        code = self.encoder(x.transpose(1, 2))
        out = self.decoder(code)[..., : x.shape[1]]
        return AEOutput(out.transpose(1, 2), code.flatten(1), x.new_zeros(()))

"""LSTM autoencoder: the last hidden state is the code, repeated over time to decode."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from service.models.base import AEOutput, Autoencoder


@dataclass(frozen=True)
class LstmConfig:
    window: int
    n_sensors: int
    hidden: int = 32
    code: int = 16


class LstmAE(Autoencoder):
    def __init__(self, cfg: LstmConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = nn.LSTM(cfg.n_sensors, cfg.hidden, batch_first=True)
        self.to_code = nn.Linear(cfg.hidden, cfg.code)
        self.decoder = nn.LSTM(cfg.code, cfg.hidden, batch_first=True)
        self.out = nn.Linear(cfg.hidden, cfg.n_sensors)

    def forward(self, x: torch.Tensor) -> AEOutput:
        _, (hidden, _) = self.encoder(x)
        code = self.to_code(hidden[-1])
        repeated = code.unsqueeze(1).expand(-1, x.shape[1], -1)
        decoded, _ = self.decoder(repeated)
        return AEOutput(self.out(decoded), code, x.new_zeros(()))

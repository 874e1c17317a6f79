"""Variational autoencoder over a flattened window.

Training samples the code (reparameterisation); evaluation uses its mean, so scores are
deterministic. `extra_loss` is the KL divergence per element, weighted by `beta` so that it
regularises the code without swamping the reconstruction term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from service.models.base import AEOutput, Autoencoder


@dataclass(frozen=True)
class VaeConfig:
    window: int
    n_sensors: int
    hidden: int = 64
    code: int = 8
    beta: float = 0.01


class VAE(Autoencoder):
    def __init__(self, cfg: VaeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_in = cfg.window * cfg.n_sensors
        self.encoder = nn.Sequential(nn.Linear(n_in, cfg.hidden), nn.GELU())
        self.mu = nn.Linear(cfg.hidden, cfg.code)
        self.logvar = nn.Linear(cfg.hidden, cfg.code)
        self.decoder = nn.Sequential(
            nn.Linear(cfg.code, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, n_in)
        )

    def forward(self, x: torch.Tensor) -> AEOutput:
        h = self.encoder(x.flatten(1))
        mu, logvar = self.mu(h), self.logvar(h).clamp(-10, 10)
        code = mu
        if self.training:
            code = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = self.decoder(code).view_as(x)
        kl = -0.5 * torch.mean(1 + logvar - mu.square() - logvar.exp())
        return AEOutput(recon, mu, self.cfg.beta * kl)

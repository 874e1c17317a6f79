"""Variational autoencoder over a flattened window.

Training samples the code (reparameterisation); evaluation uses its mean, so scores are
deterministic. `extra_loss` is `beta` times the KL divergence per input element: the
reconstruction term is a mean over elements too, so the balance does not shift with the
window's size. `beta = 1` is the ELBO of a Gaussian decoder with variance 1/2; the
default 0.1 keeps the code informative (with 1, normal windows reconstruct worse and the
contract anomalies separate about a third less).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from service.scoring.models.base import AEOutput, Autoencoder

# exp(10) is a variance no scaled input needs; the clamp keeps exp() finite early in training.
LOGVAR_LIMIT = 10.0


@dataclass(frozen=True)
class VaeConfig:
    window: int
    n_sensors: int
    hidden: int = 64
    code: int = 8
    beta: float = 0.1


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
        mu = self.mu(h)
        logvar = self.logvar(h).clamp(-LOGVAR_LIMIT, LOGVAR_LIMIT)
        code = mu
        if self.training:
            code = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = self.decoder(code).view_as(x)
        kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(dim=1).mean()
        return AEOutput(recon, mu, self.cfg.beta * kl / x[0].numel())

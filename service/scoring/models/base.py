"""What every autoencoder family returns, so training and scoring treat them alike."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class AEOutput(NamedTuple):
    """`recon` has the input's shape `[batch, time, sensors]`; `code` is the bottleneck
    (the sparse option puts L1 on it); `extra_loss` is a family's own training term
    (the VAE's KL divergence), zero for the others."""

    recon: torch.Tensor
    code: torch.Tensor
    extra_loss: torch.Tensor


class Autoencoder(nn.Module):
    """Base of the families: `forward(x)` with `x` of shape `[batch, time, sensors]`."""

    def forward(self, x: torch.Tensor) -> AEOutput:
        raise NotImplementedError

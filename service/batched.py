"""The dense and VAE families' `forward`, over many models at once, as batched matmuls.

`torch.vmap` runs any family over a stack of models, but through `functional_call`, which
swaps every parameter in and out in Python: some forty tensor calls per model call, each
giving up the GIL and winning it back from paho's thread (and from the fine-tuner's,
while it trains). The Linear-stack families need only a `baddbmm` per layer: with the
weights of `k` models as rows `[k, n_weights]` and windows `[k, batch, time, sensors]`,
these forwards cost a third of the vmapped one, and half of its p99 while a fine-tune
runs (measured with `benchmarks/latency.py` when they were written).

Each is the family's `forward` in eval mode, layer by layer, read from the module itself
(`nn.Sequential` of `nn.Linear` and `nn.GELU`); a layer of another kind raises
`NotBatchableError`, and `service.stacked` checks every forward against vmap when it forms
a group, so a family that changes falls back to vmap instead of scoring wrongly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from service.models import Autoencoder
from service.models.dense import DenseAE
from service.models.vae import VAE


@dataclass(frozen=True, slots=True)
class Span:
    """Where one parameter lives in a row of stacked weights."""

    shape: tuple[int, ...]
    start: int
    stop: int


# (rows [k, n_weights], windows [k, batch, time, sensors]) -> reconstructions, same shape
BatchedForward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NotBatchableError(Exception):
    """The module has a layer the batched forwards do not know."""


def batched_forward(model: Autoencoder, spans: Mapping[str, Span]) -> BatchedForward | None:
    """The batched forward of `model`'s family; None for a family without one."""
    if isinstance(model, DenseAE):
        return lambda rows, x: _dense(model, spans, rows, x)
    if isinstance(model, VAE):
        return lambda rows, x: _vae(model, spans, rows, x)
    return None


def _dense(
    model: DenseAE, spans: Mapping[str, Span], rows: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    code = _sequential(model.encoder, "encoder", spans, rows, x.flatten(2))
    return _sequential(model.decoder, "decoder", spans, rows, code).view_as(x)


def _vae(
    model: VAE, spans: Mapping[str, Span], rows: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """In eval mode the code is the mean: the log-variance branch does not touch `recon`."""
    hidden = _sequential(model.encoder, "encoder", spans, rows, x.flatten(2))
    mu = _linear(spans, "mu", rows, hidden)
    return _sequential(model.decoder, "decoder", spans, rows, mu).view_as(x)


def _sequential(
    seq: nn.Sequential,
    prefix: str,
    spans: Mapping[str, Span],
    rows: torch.Tensor,
    h: torch.Tensor,
) -> torch.Tensor:
    for i, layer in enumerate(seq):
        if isinstance(layer, nn.Linear):
            h = _linear(spans, f"{prefix}.{i}", rows, h)
        elif isinstance(layer, nn.GELU):
            h = functional.gelu(h, approximate=layer.approximate)
        else:
            raise NotBatchableError(f"{prefix}.{i}: {type(layer).__name__}")
    return h


def _linear(
    spans: Mapping[str, Span], name: str, rows: torch.Tensor, h: torch.Tensor
) -> torch.Tensor:
    """`h @ W.T + b` for every model at once: `h` is `[k, batch, in]`."""
    w, b = spans[f"{name}.weight"], spans[f"{name}.bias"]
    weight = rows[:, w.start : w.stop].view(len(rows), *w.shape)
    bias = rows[:, b.start : b.stop].unsqueeze(1)
    return torch.baddbmm(bias, h, weight.transpose(1, 2))

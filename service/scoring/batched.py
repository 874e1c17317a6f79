"""The families' `forward` over many models at once, as one TorchScript call.

`torch.vmap` runs any family over a stack of models, but through `functional_call`, which
swaps every parameter in and out in Python: tens of tensor calls per model call, and each
gives up the GIL and has to win it back. Under load paho's thread holds the GIL in between,
so each hand-back costs up to the switch interval: a vmapped conv call of 16 windows took
19.6 ms beside a busy Python thread against 1.9 ms alone, and `benchmarks/throughput.py`
measured 560 us per scored window while per-sensor messages poured in.

Here a family's eval-mode forward becomes a *plan*, its layers read from the module
(`nn.Sequential`s of `nn.Linear`, `nn.Conv1d`, `nn.ConvTranspose1d` and `nn.GELU`), and one
TorchScript function runs a plan for `k` models at once: with the weights of `k` models as
rows `[k, n_weights]` and windows `[k, batch, time, sensors]`, a linear layer is one
`baddbmm`, and the convolutions are grouped ones, model `i`'s channels being group `i`.
The whole plan, with the errors of its reconstructions (`plan_errors`), runs without Python
between its operations: the same conv call (25 windows, errors included) took 6.7 ms beside
the busy thread against 0.8 ms alone (its convolutions still let the GIL go a few times).
A live cycle brings one or two windows a machine, and grouped convolutions of so few
windows cost oneDNN's fixed overhead per layer, whatever the number of models: up to
`COLUMNS_BATCH` windows a model a plan's convolutions are batched matrix products instead
(`_conv_columns`), which took half the time for 4 - 16 models (conv call of 8 models and one
window each: 1.06 -> 0.55 ms alone). Their kernels are BLAS's, not oneDNN's, so the
fine-tuner's fits, whose shapes fill oneDNN's kernel cache, cannot evict a live cycle's.
A layer of another kind raises `NotBatchableError`, and `service.scoring.stacked` checks
every plan, both ways, against vmap when it forms a group, so a family that changes falls
back to vmap instead of scoring wrongly.

TorchScript is deprecated in favour of `torch.compile`, which compiles C++ at run time
(a compiler, a writable cache) and so is no option for a daemon in a read-only sandbox;
torch is pinned (constraints.txt), and a torch without TorchScript would fail the tests.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from service.scoring.models import Autoencoder
from service.scoring.models.conv import ConvAE
from service.scoring.models.dense import DenseAE
from service.scoring.models.vae import VAE


@dataclass(frozen=True, slots=True)
class Span:
    """Where one parameter lives in a row of stacked weights."""

    shape: tuple[int, ...]
    start: int
    stop: int


# A step of a plan and its integers: see `_run`.
Plan = list[tuple[str, list[int]]]


# Windows a model in a call up to which convolutions run as matrix products. At a live
# cycle's one or two, a conv call of 4 - 16 models took half the time of the grouped
# convolutions (8 models: 0.55 against 1.06 ms alone, window 20, one thread); from a few
# tens of windows a model the grouped ones are faster (8 x 64: 6.6 against 15 ms).
COLUMNS_BATCH = 4


class NotBatchableError(Exception):
    """The module has a layer the batched forwards do not know."""


def run_plan(rows: torch.Tensor, x: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Reconstructions of windows `x` `[k, batch, time, sensors]` by the `k` models whose
    weights are `rows` `[k, n_weights]`."""
    run: Callable[[torch.Tensor, torch.Tensor, Plan, int], torch.Tensor] = scripted(_run)
    return run(rows, x, plan, COLUMNS_BATCH)


def plan_errors(
    weights: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    held: torch.Tensor,
    slots: torch.Tensor,
    rows: torch.Tensor,
    x: torch.Tensor,
    plan: Plan,
    offset_weight: float,
) -> torch.Tensor:
    """Per-sensor errors `[k, batch, sensors]` of raw windows `x` `[k, batch, time,
    sensors]`, item `i` scaled and scored by the model in row `slots[i]` of `weights`,
    `mean`, `std` and `held` (its weights gathered into `rows`), in one call."""
    run = scripted(_plan_errors)
    return run(weights, mean, std, held, slots, rows, x, plan, offset_weight, COLUMNS_BATCH)


def residual_errors(
    residual: torch.Tensor, offset_weight: float, held: torch.Tensor | None
) -> torch.Tensor:
    """`service.scoring.detector.sensor_errors` of a residual `[..., time, sensors]`."""
    return scripted(_errors)(residual, offset_weight, held)


def family_plan(model: Autoencoder, spans: Mapping[str, Span]) -> Plan | None:
    """`model`'s eval-mode forward as a plan; None for a family without one."""
    if isinstance(model, DenseAE):
        return [
            ("flatten", []),
            *_layers(model.encoder, "encoder", spans),
            *_layers(model.decoder, "decoder", spans),
            ("unflatten", []),
        ]
    if isinstance(model, VAE):
        # In eval mode the code is the mean: the log-variance branch does not touch `recon`.
        return [
            ("flatten", []),
            *_layers(model.encoder, "encoder", spans),
            _linear(model.mu, "mu", spans),
            *_layers(model.decoder, "decoder", spans),
            ("unflatten", []),
        ]
    if isinstance(model, ConvAE):
        return [
            ("channels", []),
            *_layers(model.encoder, "encoder", spans),
            *_layers(model.decoder, "decoder", spans),
            ("windows", []),
        ]
    return None


def _layers(seq: nn.Sequential, prefix: str, spans: Mapping[str, Span]) -> Plan:
    plan: Plan = []
    for i, layer in enumerate(seq):
        name = f"{prefix}.{i}"
        if isinstance(layer, nn.Linear):
            plan.append(_linear(layer, name, spans))
        elif isinstance(layer, nn.Conv1d | nn.ConvTranspose1d):
            plan.append(_convolution(layer, name, spans))
        elif isinstance(layer, nn.GELU) and layer.approximate in ("none", "tanh"):
            plan.append(("gelu" if layer.approximate == "none" else "gelu_tanh", []))
        else:
            raise NotBatchableError(f"{name}: {type(layer).__name__}")
    return plan


def _weights(name: str, spans: Mapping[str, Span]) -> list[int]:
    w, b = spans[f"{name}.weight"], spans[f"{name}.bias"]
    return [w.start, w.stop, b.start, b.stop]


def _linear(layer: nn.Linear, name: str, spans: Mapping[str, Span]) -> tuple[str, list[int]]:
    if layer.bias is None:
        raise NotBatchableError(f"{name}: Linear without bias")
    return "linear", [*_weights(name, spans), layer.in_features, layer.out_features]


def _convolution(
    layer: nn.Conv1d | nn.ConvTranspose1d, name: str, spans: Mapping[str, Span]
) -> tuple[str, list[int]]:
    """A convolution the plans can run; anything they do not implement (dilation, groups,
    other padding, output padding, no bias) raises `NotBatchableError`."""
    padding = layer.padding
    plain = (
        layer.dilation == (1,)
        and layer.groups == 1
        and layer.padding_mode == "zeros"
        and isinstance(padding, tuple)
        and tuple(layer.output_padding) in ((), (0,))
        and layer.bias is not None
    )
    if not plain or not isinstance(padding, tuple):
        raise NotBatchableError(f"{name}: {layer}")
    shape = [layer.in_channels, layer.out_channels, layer.kernel_size[0], layer.stride[0]]
    kind = "conv_transpose" if isinstance(layer, nn.ConvTranspose1d) else "conv"
    return kind, [*_weights(name, spans), *shape, padding[0]]


def _run(
    rows: torch.Tensor, x: torch.Tensor, plan: list[tuple[str, list[int]]], columns_batch: int
) -> torch.Tensor:
    """Runs `plan` for `k` models: `rows` `[k, n_weights]`, `x` `[k, batch, time, sensors]`.
    Up to `columns_batch` windows a model, convolutions are matrix products on windows laid
    out `[k, batch, time, channels]` (`_conv_columns`); more, grouped convolutions on
    `[batch, k * channels, time]`.
    TorchScript: no annotations beyond its own, no closures (`COLUMNS_BATCH` is passed),
    integers unpacked by index."""
    k, batch = x.shape[0], x.shape[1]
    columns = batch <= columns_batch
    h = x
    for step, a in plan:
        if step == "gelu":
            h = functional.gelu(h)
        elif step == "gelu_tanh":
            h = functional.gelu(h, approximate="tanh")
        elif step == "flatten":
            h = h.flatten(2)
        elif step == "unflatten":
            h = h.reshape(x.shape)
        elif step == "linear":
            # `h @ W.T + b`, h `[k, batch, in]`, W `[k, out, in]`
            weight = rows[:, a[0] : a[1]].view(k, a[5], a[4])
            bias = rows[:, a[2] : a[3]].unsqueeze(1)
            h = torch.baddbmm(bias, h, weight.transpose(1, 2))
        elif step in ["channels", "windows"]:
            h = _layout(h, list(x.shape), step == "channels", columns)
        elif step in ["conv", "conv_transpose"]:
            if columns:
                h = _conv_columns(h, rows, a, step == "conv_transpose")
            else:
                h = _conv_grouped(h, rows, a, k, step == "conv_transpose")
    return h


def _layout(h: torch.Tensor, shape: list[int], into: bool, columns: bool) -> torch.Tensor:
    """Into the convolutions' layout (`into`) or back to windows `shape` `[k, batch, time,
    sensors]`, cropped: the decoder may return more steps than the window has. Grouped
    convolutions take `[batch, k * sensors, time]`, model `i`'s channels group `i` (what
    vmap makes of them, too); matrix products take the windows as they are."""
    k, batch, steps, sensors = shape[0], shape[1], shape[2], shape[3]
    if columns:
        return h if into else h[:, :, :steps]
    if into:
        return h.permute(1, 0, 3, 2).reshape(batch, k * sensors, steps)
    return h[:, :, :steps].reshape(batch, k, sensors, steps).permute(1, 0, 3, 2)


def _conv_columns(
    h: torch.Tensor, rows: torch.Tensor, a: list[int], transposed: bool
) -> torch.Tensor:
    """A convolution of `h` `[k, batch, time, in]` as a batched matrix product over the
    models: a plain one multiplies its input's columns (each output step's receptive field,
    `unfold`) by the weights; a transposed one multiplies, then adds the overlapping columns
    up (`fold`). BLAS kernels, not oneDNN's: nothing for the fine-tuner's fits to evict."""
    k, batch, t_in = h.shape[0], h.shape[1], h.shape[2]
    cin, cout, kernel, stride, pad = a[4], a[5], a[6], a[7], a[8]
    if transposed:
        weight = rows[:, a[0] : a[1]].view(k, cin, cout * kernel)
        cols = torch.bmm(h.reshape(k, batch * t_in, cin), weight)
        cols = cols.view(k * batch, t_in, cout * kernel).transpose(1, 2)
        t_out = (t_in - 1) * stride + kernel - 2 * pad
        summed = functional.fold(cols, (t_out, 1), (kernel, 1), 1, (pad, 0), (stride, 1))
        bias = rows[:, a[2] : a[3]].view(k, 1, 1, cout)
        return summed.view(k, batch, cout, t_out).transpose(2, 3) + bias
    weight = rows[:, a[0] : a[1]].view(k, cout, cin * kernel)
    bias = rows[:, a[2] : a[3]].unsqueeze(1)
    steps = functional.pad(h, [0, 0, pad, pad]).unfold(2, kernel, stride)
    t_out = steps.shape[2]  # `[k, batch, t_out, in, kernel]`
    cols = steps.reshape(k, batch * t_out, cin * kernel)
    return torch.baddbmm(bias, cols, weight.transpose(1, 2)).view(k, batch, t_out, cout)


def _conv_grouped(
    h: torch.Tensor, rows: torch.Tensor, a: list[int], k: int, transposed: bool
) -> torch.Tensor:
    """A convolution of `h` `[batch, k * in, time]`, model `i`'s channels group `i`."""
    cin, cout, kernel = a[4], a[5], a[6]
    bias = rows[:, a[2] : a[3]].reshape(k * cout)
    if transposed:
        weight = rows[:, a[0] : a[1]].reshape(k * cin, cout, kernel)
        return functional.conv_transpose1d(h, weight, bias, a[7], a[8], 0, k)
    weight = rows[:, a[0] : a[1]].reshape(k * cout, cin, kernel)
    return functional.conv1d(h, weight, bias, a[7], a[8], 1, k)


def _errors(
    residual: torch.Tensor, offset_weight: float, held_weight: torch.Tensor | None
) -> torch.Tensor:
    squared = residual.square().mean(dim=-2)
    if offset_weight > 0 or held_weight is not None:
        held = residual.mean(dim=-2).square()
        factor = 1.0 + offset_weight * residual.shape[-2]
        weight = held_weight if held_weight is not None else torch.ones_like(held)
        squared = squared + held * (factor * weight - 1.0)
    return squared


def _plan_errors(
    weights: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    held: torch.Tensor,
    slots: torch.Tensor,
    rows: torch.Tensor,
    x: torch.Tensor,
    plan: list[tuple[str, list[int]]],
    offset_weight: float,
    columns_batch: int,
) -> torch.Tensor:
    torch.index_select(weights, 0, slots, out=rows)
    mean_of = mean.index_select(0, slots).unsqueeze(1).unsqueeze(1)
    std_of = std.index_select(0, slots).unsqueeze(1).unsqueeze(1)
    scaled = (x - mean_of) / std_of
    held_of = held.index_select(0, slots).unsqueeze(1)  # broadcast over an item's windows
    recon = _run(rows, scaled, plan, columns_batch)
    return _errors(recon - scaled, offset_weight, held_of)


_SCRIPTED: dict[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] = {}
# The pipeline (stacked scoring) and the fine-tuner (calibration) may first need a function
# at the same moment, and TorchScript compiles into one global compilation unit.
_SCRIPTING = threading.Lock()


def scripted(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`function` compiled by TorchScript, once, on first use (~20 ms): it then runs in C++
    without Python between its tensor operations, so under load it does not give the GIL
    up and wait to win it back after every one of them."""
    compiled = _SCRIPTED.get(function)
    if compiled is None:
        with _SCRIPTING, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # see the module's docstring
            compiled = _SCRIPTED.get(function) or torch.jit.script(function)
            _SCRIPTED[function] = compiled
    return compiled

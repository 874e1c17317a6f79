"""`Detector`: scaler + autoencoder + threshold for one machine.

The only torch user outside `models/` and `finetune.py`. Scores are the mean squared
reconstruction error in scaled units; per-sensor errors say which sensors drove a score.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog
import torch

from service.core.config import ModelSettings, ThresholdSettings
from service.core.types import FloatArray
from service.scoring.batched import residual_errors
from service.scoring.latent import LatentMap, fit_map
from service.scoring.models import AEOutput, Autoencoder, build_model
from service.scoring.stack_row import Spans, StackRow, copy_into, point_at
from service.scoring.threshold import fitted_threshold

# A sensor that was constant while learning would otherwise divide by ~0 and turn any
# later wiggle of its noise into a huge error.
MIN_STD_FRACTION = 1e-3
MIN_STD = 1e-6
# A model saved before a scoring option existed was calibrated without it: it keeps
# scoring as it was calibrated, whatever today's default is.
LEGACY_SCORING: dict[str, float] = {
    "offset_weight": 0.0,
    "drift_widening": 0.0,
    "offset_discount": 0.0,
}

log = structlog.get_logger(__name__)

# `(epochs done, epochs in all)`, after each epoch of training.
EpochCallback = Callable[[int, int], None]
# Called before each training batch: it may wait (the fine-tuner takes turns beside the
# pipeline) and raises `FitCancelledError` to stop the fit.
BetweenBatches = Callable[[], None]


@dataclass
class FitReport:
    windows_train: int
    windows_holdout: int
    final_loss: float
    threshold: float
    holdout_scores: FloatArray = field(repr=False)


@dataclass
class Detector:
    """Scores windows `[batch, time, sensors]` of one machine.

    Its weights are its `module`'s, or, once a stack scores it, its row of the stack alone
    (`stacked`, see service.scoring.stack_row): `model` then builds a module over the row
    when something asks for one (the status page, a clone for a fine-tune, a save)."""

    sensors: tuple[str, ...]
    window: int
    settings: ModelSettings
    module: Autoencoder | None
    mean: FloatArray
    std: FloatArray
    threshold: float = float("inf")
    version: int = 0
    # The threshold of the fit from scratch this model descends from: fine-tunes keep
    # theirs within bounds of it (`threshold.promoted_threshold`).
    base_threshold: float | None = None
    # Per sensor, what a held offset of its residual counts (`ModelSettings.offset_discount`):
    # 1 for a sensor whose level held as steady while learning as the machine's median one.
    held_weight: FloatArray = field(default_factory=lambda: np.ones(0, np.float32), repr=False)
    # The 2-D map of the model's latent codes, fitted on its training windows (the status
    # page's); None for a model saved before maps existed, until its next fine-tune.
    latent_map: LatentMap | None = field(default=None, repr=False)
    stacked: StackRow | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.held_weight.shape != (len(self.sensors),):
            self.held_weight = np.ones(len(self.sensors), np.float32)

    @property
    def model(self) -> Autoencoder:
        """The autoencoder; for a stack member, a new module over its row at each read."""
        if self.module is not None:
            return self.module
        assert self.stacked is not None, "a detector has a module or a row"
        return self.stacked.module()

    def weights_into(self, row: torch.Tensor, skeleton: Autoencoder, spans: Spans) -> None:
        """Copies the weights into `row` and keeps them there alone (its module is dropped).
        A model with buffers keeps its module: the row holds parameters only."""
        if self.stacked is not None and self.stacked.spans == spans:
            # A stack that grows moves every member: row to row, no module built.
            row.copy_(self.stacked.row)
            self.stacked = StackRow(row, skeleton, spans)
            return
        source = self.model
        copy_into(row, spans, source)
        if next(source.buffers(), None) is not None:
            point_at(row, spans, source)
            return
        self.module = None
        self.stacked = StackRow(row, skeleton, spans)

    def own_weights(self) -> None:
        """Takes its weights out of a stack: a copy of its row (or of its module's views)
        becomes its own, and the row may be reused."""
        if self.stacked is not None:
            self.stacked = self.stacked.detached()
            return
        assert self.module is not None
        with torch.no_grad():
            for param in self.module.parameters():
                param.data = param.data.clone()

    @classmethod
    def new(cls, sensors: tuple[str, ...], window: int, settings: ModelSettings) -> Detector:
        torch.manual_seed(settings.seed)
        model = build_model(settings.kind, window, len(sensors), dict(settings.params))
        n = len(sensors)
        return cls(
            sensors, window, settings, model, np.zeros(n, np.float32), np.ones(n, np.float32)
        )

    @classmethod
    def from_state(cls, meta: Mapping[str, Any], weights: Mapping[str, torch.Tensor]) -> Detector:
        """The inverse of `meta()` and `model.state_dict()`: the detector as it was saved.
        Raises `ValueError`, `KeyError` or `RuntimeError` (a tensor missing, extra or of
        the wrong shape) when the two do not make one detector."""
        settings = ModelSettings.model_validate({**LEGACY_SCORING, **meta["model"]})
        sensors = tuple(str(s) for s in meta["sensors"])
        window = int(meta["window"])
        model = build_model(settings.kind, window, len(sensors), dict(settings.params))
        model.load_state_dict(weights)
        model.eval()
        mean = np.asarray(meta["mean"], dtype=np.float32)
        std = np.asarray(meta["std"], dtype=np.float32)
        held = np.asarray(meta.get("held_weight", np.ones(len(sensors))), dtype=np.float32)
        if {mean.shape, std.shape, held.shape} != {(len(sensors),)}:
            shapes = f"{mean.shape}/{std.shape}/{held.shape}"
            raise ValueError(f"scaler of {shapes} for {len(sensors)} sensors")
        threshold = float(meta["threshold"])
        base = float(meta.get("base_threshold") or threshold)
        version = int(meta["version"])
        saved_map = meta.get("latent_map")
        latent_map = LatentMap.from_json(saved_map) if saved_map else None
        return cls(
            sensors, window, settings, model, mean, std, threshold, version, base, held, latent_map
        )

    def fit(
        self,
        windows: FloatArray,
        threshold: ThresholdSettings,
        between: BetweenBatches | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> FitReport:
        """Fits scaler, model and threshold on normal `windows` (in time order).

        The threshold is calibrated on the newest windows, scored by the model trained on
        the older ones only (`split_holdout`); the model then trains on for half its
        epochs on all the windows, so the newest operating points are learnt too. Having
        seen more, it scores unseen windows no worse, typically: the threshold errs high
        rather than low. Nor is it below the plain quantile of that first model's scores
        of all the learning windows (`threshold.fitted_threshold`). `on_epoch(done,
        total)` follows both trainings, `between()` runs before each of their batches."""
        train, holdout = split_holdout(windows, threshold.holdout)
        self._fit_scaler(windows)
        first, then = self.settings.epochs, max(1, self.settings.epochs // 2)
        progress = _Progress(on_epoch, first + then)
        train_model(self.model, self.scaled(train), self.settings, first, between, progress.at(0))
        holdout_scores, _ = self.score_many(holdout)
        self.threshold = fitted_threshold(holdout_scores, self.score_many(windows)[0], threshold)
        self.base_threshold = self.threshold
        x = self.scaled(windows)
        loss = train_model(self.model, x, self.settings, then, between, progress.at(first))
        self.latent_map = fit_map(self, windows)
        return FitReport(len(windows), len(holdout), loss, self.threshold, holdout_scores)

    def score_many(self, windows: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Scores `[batch]` and per-sensor errors `[batch, sensors]`, in one model call."""
        x = self.scaled(windows)
        model = self.model
        model.eval()
        with torch.inference_mode():
            residual = model(x).recon - x
            errors = sensor_errors(residual, self.settings.offset_weight, self.held_weight)
        return window_scores(errors), errors

    def clone(self) -> Detector:
        """An independent copy (its own weights), e.g. for the fine-tuner to train."""
        return Detector(
            self.sensors,
            self.window,
            self.settings,
            copy.deepcopy(self.model),
            self.mean.copy(),
            self.std.copy(),
            self.threshold,
            self.version,
            self.base_threshold,
            self.held_weight.copy(),
            self.latent_map,
        )

    def meta(self) -> dict[str, Any]:
        """Everything but the weights, as JSON-able values."""
        return {
            "sensors": list(self.sensors),
            "window": self.window,
            "model": self.settings.model_dump(),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "threshold": self.threshold,
            "version": self.version,
            "base_threshold": self.base_threshold,
            "held_weight": self.held_weight.tolist(),
            "latent_map": self.latent_map.to_json() if self.latent_map else None,
        }

    def _fit_scaler(self, windows: FloatArray) -> None:
        rows = windows.reshape(-1, windows.shape[-1]).astype(np.float64)
        mean = rows.mean(axis=0)
        floor = np.maximum(np.abs(mean) * MIN_STD_FRACTION, MIN_STD)
        std = np.maximum(rows.std(axis=0), floor)
        # Against the scale's floor for the widening; against the sensors' own noise for
        # the discount, or a precise thermocouple (0.01 degrees of noise at 25) whose level
        # wandered by a degree would not count as having wandered.
        wander, own = level_wander(windows, np.stack([floor, np.full_like(floor, MIN_STD)]))
        widening = np.minimum(
            relative_to(wander, float(wander.min())) ** self.settings.drift_widening,
            self.settings.drift_widening_max,
        )
        self.mean = mean.astype(np.float32)
        self.std = (std * widening).astype(np.float32)
        discount = relative_to(own, float(np.median(own))) ** self.settings.offset_discount
        self.held_weight = (1.0 / discount).astype(np.float32)

    def scaled(self, windows: FloatArray) -> torch.Tensor:
        """Windows in this detector's scaled units, as the model sees them."""
        scaled = (np.asarray(windows, dtype=np.float32) - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32))


def sensor_errors(
    residual: torch.Tensor, offset_weight: float, held_weight: FloatArray | None = None
) -> FloatArray:
    """Per window and sensor `[..., time, sensors]` -> `[..., sensors]` (shared with
    `service.scoring.stacked`, which scores many machines at once).

    The mean squared residual is its variance within the window plus its held offset (the
    window mean, squared); the offset counts `1 + offset_weight * length` times, times the
    sensor's `held_weight` (broadcast against `[..., sensors]`). White noise of variance s^2
    adds s^2 to the variance and s^2 / length to the offset; an offset d held over the window
    adds d^2 to the offset alone, so with `offset_weight > 0` a held shift stands out of the
    noise. With `offset_weight = 0` and weights of 1 this is the plain mean squared error."""
    held = None if held_weight is None else torch.from_numpy(held_weight)
    return residual_errors(residual, offset_weight, held).numpy().astype(np.float32, copy=False)


def window_scores(errors: FloatArray) -> FloatArray:
    """A window's score from its per-sensor errors `[..., sensors]`."""
    scores: FloatArray = errors.mean(axis=-1)
    return scores


def level_wander(windows: FloatArray, floor: FloatArray) -> FloatArray:
    """Per sensor: how much more the windows' means spread than the sensor's noise alone
    would make them (its mean within-window variance / window length, at least `floor`
    squared). About 1 for a sensor that is noise around a level; large for a slow state
    that wanders (a temperature). `floor` `[..., sensors]`: one result per floor, the
    windows' statistics computed once.

    >>> rng = np.random.default_rng(0)
    >>> noise = rng.normal(size=(400, 1))
    >>> ramp = np.linspace(0, 20, 400)[:, None] + 0.1 * rng.normal(size=(400, 1))
    >>> rows = np.hstack([noise, ramp])
    >>> windows = np.stack([rows[i : i + 30] for i in range(371)])
    >>> noise_ratio, ramp_ratio = level_wander(windows, np.full(2, 1e-6))
    >>> bool(noise_ratio < 1.5), bool(ramp_ratio > 1000)
    (True, True)
    """
    values = np.asarray(windows, dtype=np.float64)
    length = values.shape[1]
    noise = np.maximum(values.var(axis=1).mean(axis=0), np.square(floor)) / length
    ratio: FloatArray = values.mean(axis=1).var(axis=0) / noise
    return ratio


def relative_to(wander: FloatArray, reference: float) -> FloatArray:
    """`wander` in units of a reference sensor's, at least 1. Relative, because a machine
    whose sensors all follow its load wanders as a whole: that is operation the model learns,
    not drift. Against the steadiest sensor for the widening of scales, against the median
    one for the discount of held offsets (one steady sensor must not make all others look
    like drift).

    >>> relative_to(np.array([0.5, 2.0, 8.0]), 2.0).tolist()
    [1.0, 1.0, 4.0]
    """
    relative: FloatArray = np.maximum(wander / max(reference, 1.0), 1.0)
    return relative


def split_holdout(windows: FloatArray, share: float) -> tuple[FloatArray, FloatArray]:
    """The older windows (in time order) to train on, and the newest `share` of them to
    calibrate on, with the `length - 1` windows between the two used for neither.

    Sliding windows overlap (with stride 1 neighbours are near copies), so a window held
    out among training windows scores like a training window and calibrates too low a
    threshold. Windows `length` apart share no step at any stride.

    >>> rows = np.arange(100, dtype=np.float32)
    >>> windows = np.stack([rows[i : i + 10] for i in range(91)])[:, :, None]
    >>> train, holdout = split_holdout(windows, 0.25)
    >>> len(train), len(holdout), int(train[-1, -1, 0]), int(holdout[0, 0, 0])
    (59, 23, 67, 68)
    """
    n, wanted = len(windows), windows.shape[1] - 1
    n_hold = min(n - 1, max(1, round(n * share)))
    gap = min(wanted, max(0, n - 2 * n_hold))
    if gap < wanted:
        log.warning("holdout_overlaps_training", windows=n, window_length=wanted + 1, gap=gap)
    return windows[: n - n_hold - gap], windows[n - n_hold :]


@dataclass(frozen=True)
class _Progress:
    """Epochs of consecutive trainings, reported to `on_epoch` as one count."""

    on_epoch: EpochCallback | None
    total: int

    def at(self, before: int) -> EpochCallback | None:
        """The callback for a training that starts after `before` epochs."""
        report = self.on_epoch
        if report is None:
            return None
        return lambda done, _: report(before + done, self.total)


class FitCancelledError(Exception):
    """Training stopped because the daemon is shutting down."""


def train_model(
    model: Autoencoder,
    x: torch.Tensor,
    settings: ModelSettings,
    epochs: int,
    between: BetweenBatches | None = None,
    on_epoch: EpochCallback | None = None,
) -> float:
    """Adam on reconstruction loss; the denoising and sparse options apply to every family.
    Returns the last epoch's mean loss."""
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    model.train()
    epoch_loss = float("nan")
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), settings.batch_size):
            if between is not None:
                between()
            batch = x[order[start : start + settings.batch_size]]
            loss = reconstruction_loss(model, batch, settings, generator)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        epoch_loss = total / len(x)
        if on_epoch is not None:
            on_epoch(epoch + 1, epochs)
    model.eval()
    return epoch_loss


def reconstruction_loss(
    model: Autoencoder, clean: torch.Tensor, settings: ModelSettings, generator: torch.Generator
) -> torch.Tensor:
    noisy = clean
    if settings.denoise_std > 0:
        noise = torch.randn(clean.shape, generator=generator) * settings.denoise_std
        noisy = clean + noise
    out: AEOutput = model(noisy)
    loss: torch.Tensor = (out.recon - clean).square().mean() + out.extra_loss
    if settings.sparse_l1 > 0:
        loss = loss + settings.sparse_l1 * out.code.abs().mean()
    return loss

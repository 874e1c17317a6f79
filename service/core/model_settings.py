"""Settings sections of the models: the autoencoder, its threshold, learning and
fine-tuning (`service.core.config` assembles them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from service.core.sections import Section


class ModelSettings(Section):
    """The autoencoder family, its training, and how a window's error is scored."""

    kind: str = Field("conv", description="Autoencoder family (dense, conv, lstm, vae).")
    params: dict[str, int | float] = Field(
        default_factory=dict, description="Family config fields, e.g. channels = 32 (conv)."
    )
    epochs: int = Field(60, ge=1, description="Training epochs of a fit from scratch.")
    batch_size: int = Field(64, ge=1, description="Training batch size.")
    learning_rate: float = Field(2e-3, gt=0, description="Adam learning rate.")
    denoise_std: float = Field(0.0, ge=0, description="Denoising: input noise std in scaled units.")
    sparse_l1: float = Field(0.0, ge=0, description="Sparse: L1 weight on the code.")
    offset_weight: float = Field(
        0.3,
        ge=0,
        description="Weight of a persistent offset in a sensor's residual: its window mean, "
        "squared and times the window length, is added with this weight to the mean squared "
        "error. A fault (a closed valve, a blockage) shifts a level and holds it; noise does "
        "not. 0 scores the plain mean squared error.",
    )
    drift_widening: float = Field(
        0.5,
        ge=0,
        description="A sensor whose window means spread rho times more while learning than its "
        "noise explains (relative to the machine's steadiest sensor) is a slow state, such as a "
        "temperature: learning saw only part of its range, so its scale is widened by "
        "rho ** drift_widening. 0 keeps the learning spread.",
    )
    offset_discount: float = Field(
        1.0,
        ge=0,
        description="A sensor whose window means spread rho times more while learning than the "
        "machine's median sensor's (relative to their noise) has the held offsets of its "
        "residual counted rho ** -offset_discount times: a slow state that wanders (a "
        "temperature) holds offsets in normal operation, a sensor that held its level (a flow, "
        "a pressure) does not. 0 counts every sensor's offsets alike.",
    )
    drift_widening_max: float = Field(
        10.0,
        ge=1,
        description="The most a scale is widened: a slow state that runs far outside its "
        "learning range (an overheating bearing) must still raise its score.",
    )
    seed: int = Field(0, description="Seed of weight init and training order.")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads (2-core boxes: 1).")


class ThresholdSettings(Section):
    """How a machine's threshold is calibrated on the scores of normal windows."""

    method: Literal["quantile", "spot"] = Field(
        "quantile",
        description="Calibration on normal scores: quantile, or spot (a GPD tail fit, "
        "Siffer et al. 2017); both are widened by spread and multiplied by margin.",
    )
    quantile: float = Field(0.995, gt=0.5, lt=1, description="Quantile of held-out normal scores.")
    margin: float = Field(
        1.0, ge=1, description="Threshold = (quantile + spread x (quantile - median)) x margin."
    )
    spread: float = Field(
        2.5,
        ge=0,
        description="How many times the held-out scores' own width (their quantile minus "
        "their median) the threshold lies beyond the quantile (0 and margin 2: the former "
        "rule, quantile x 2).",
    )
    holdout: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="Newest share of the learning windows, held out from a first model (with "
        "a gap of one window length) to calibrate the threshold on; the model kept then "
        "trains on all of them.",
    )
    spot_risk: float = Field(
        1e-4, gt=0, lt=0.5, description="spot: chance that a normal window scores above z_q."
    )
    spot_level: float = Field(
        0.98,
        gt=0.5,
        lt=1,
        description="spot: quantile whose excesses are fitted (lowered to "
        "keep spot_min_peaks peaks).",
    )
    spot_min_peaks: int = Field(
        10, ge=5, description="spot: fewest peaks for a fit; fewer falls back to the quantile."
    )


class LearningSettings(Section):
    """How a new machine learns its first model."""

    windows: int = Field(
        600,
        ge=20,
        description="Windows of a new machine taken as normal to fit its first model. The "
        "newest threshold.holdout of them calibrate the threshold, so they should span the "
        "machine's operating points several times over.",
    )


class FinetuneSettings(Section):
    """Fine-tuning on recent clean windows, its gate, and drift on the scores."""

    enabled: bool = Field(True, description="Fine-tune each machine's model on recent normal data.")
    interval: float = Field(
        3600.0, gt=0, description="Event-time seconds between fine-tunes of a machine."
    )
    min_windows: int = Field(
        100, ge=10, description="Fewer new clean windows than this: the run is too_few_windows."
    )
    admit_every: int = Field(
        10, ge=1, description="Keep every n-th clean window (neighbours overlap almost fully)."
    )
    recent_windows: int = Field(400, ge=20, description="Recent clean windows kept per machine.")
    reservoir_windows: int = Field(
        200,
        ge=0,
        description="Older normal windows kept by reservoir sampling, against forgetting.",
    )
    margin_windows: int = Field(
        120, ge=0, description="Windows before and after an alert episode kept out of training."
    )
    episode_windows: int = Field(
        200, ge=0, description="Anomalous windows of recent episodes the gate checks against."
    )
    episode_factor: float = Field(
        2.0,
        ge=1,
        description="Only windows scoring this many times the threshold are kept as episode "
        "windows for the gate, so a marginal false alert cannot lock the model.",
    )
    epochs: int = Field(20, ge=1, description="Epochs of one fine-tune.")
    tolerance: float = Field(
        0.1, ge=0, description="Gate: candidate holdout error may exceed the current by this share."
    )
    episode_recall: float = Field(
        0.9, gt=0, le=1, description="Gate: share of episode windows the candidate must flag."
    )
    new_normal_after: float = Field(
        14400.0,
        ge=0,
        description="Event-time seconds a firing alert's windows must hold steady (every "
        "sensor's level within new_normal_band) before the state counts as a new normal and "
        "the model re-baselines on it through the gate; promoted, the alert resolves as "
        "new_normal. A fault that keeps evolving never holds steady; a steady one scoring "
        "episode_factor times the threshold fills the gate's episodes and is refused. Shorter "
        "learns steady faults too: on TEP, 1 h learnt fault 21's stuck valve. 0: never.",
    )
    new_normal_band: float = Field(
        1.0,
        gt=0,
        description="How far (in units of a sensor's spread while learning) a sensor's level "
        "may move while its machine's alert counts as holding steady.",
    )
    drift_detection: bool = Field(
        True,
        description="Watch each machine's scores (in units of its threshold) with ADWIN; a "
        "rise in their level requests a fine-tune ahead of the interval. The request waits "
        "margin_windows windows and is dropped if an alert starts meanwhile (the rise was a "
        "fault), as is one made during an alert episode or its margin.",
    )
    drift_min_spacing: float = Field(
        900.0,
        gt=0,
        description="Event-time seconds from a machine's last fine-tune before a drift may "
        "request the next one.",
    )
    drift_delta: float = Field(
        0.002,
        gt=0,
        lt=1,
        description="ADWIN's confidence: smaller detects fewer, larger changes.",
    )
    threshold_step: float = Field(
        1.25,
        ge=1,
        description="A promoted model's threshold is calibrated like a first fit's (the "
        "quantile of its held-out recent clean windows, never below that of its training "
        "windows) and may rise above the current one by at most this factor per promotion. "
        "It never falls: clean windows are those that scored under the current threshold, a "
        "sample cut off at it, so their quantile is biased low; and normal drift goes on "
        "between fine-tunes. Only a fit from scratch (learning, aemon train) lowers it.",
    )
    threshold_ceiling: float = Field(
        2.0,
        ge=1,
        description="A promoted threshold never exceeds this multiple of the threshold of "
        "the fit from scratch the model descends from, so successive fine-tunes cannot "
        "ratchet it up without bound (a slow fault that raised it would let more of itself "
        "in as clean). Reaching it is logged (finetune_threshold_capped).",
    )

"""`FineTuner`: fits and refits models on its own thread, never on the pipeline's.

The scorer and the fine-tuner never share a torch module: the pipeline hands over clones,
the fine-tuner trains a copy and hands a finished detector back through `install`.

A fine-tune must never teach a model that a fault is normal, so it trains only on windows
that scored clean, outside every alert episode and a margin around it (`TrainingBuffer`),
and the candidate must pass a gate: reconstruct held-out recent clean windows no worse
than the current model, and still flag the windows of the machine's recent episodes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import structlog
import torch

from service.core.config import FinetuneSettings, Settings
from service.core.metrics import Metrics
from service.core.threads import Worker
from service.core.types import FloatArray
from service.learning.store import ModelStore, TrainingFacts
from service.scoring.detector import (
    Detector,
    EpochCallback,
    FitCancelledError,
    FitReport,
    train_model,
)
from service.scoring.threshold import calibrate, promoted_threshold

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class FitResult:
    """What a job gives back: a detector to install (None: keep the current one)."""

    machine: str
    detector: Detector | None
    initial: bool


Install = Callable[[FitResult], None]


@dataclass(frozen=True)
class FitJob:
    machine: str
    sensors: tuple[str, ...]
    windows: FloatArray


@dataclass(frozen=True)
class FineTuneJob:
    machine: str
    current: Detector  # a clone: the pipeline keeps scoring with its own
    train: FloatArray
    holdout: FloatArray
    episodes: FloatArray
    reason: str = "finetune"  # or "drift": requested early by a drift in the scores


class TrainingBuffer:
    """One machine's clean windows for fine-tuning, kept on the pipeline thread.

    Windows wait in a holding line of `margin` admissions before they are admitted, so
    when an alert starts, the windows that led up to it are dropped too; after an episode
    the next `margin` windows are dropped as well. Admitted windows go to a bounded recent
    buffer; the learning windows and those the recent buffer evicts are reservoir-sampled,
    so older normal operation is not forgotten. Anomalous windows of episodes are kept for
    the gate.
    """

    def __init__(self, settings: FinetuneSettings, seed: int = 0) -> None:
        self.s = settings
        hold = -(-settings.margin_windows // settings.admit_every)
        self._holding: deque[FloatArray] = deque()
        self._hold = hold
        self._cooldown = 0
        self._counter = 0
        self._seen_evicted = 0
        self._rng = np.random.default_rng(seed)
        self.recent: deque[FloatArray] = deque(maxlen=settings.recent_windows)
        self.reservoir: list[FloatArray] = []
        self.episodes: deque[FloatArray] = deque(maxlen=settings.episode_windows)
        self.new_since_fit = 0
        self.excluded = 0

    def observe(
        self, values: FloatArray, score: float, threshold: float, alert_active: bool
    ) -> None:
        anomalous = score > threshold
        if alert_active:
            self.excluded += len(self._holding) + 1
            self._holding.clear()
            self._cooldown = self.s.margin_windows
            if score >= threshold * self.s.episode_factor:
                self.episodes.append(values)
            return
        if self._cooldown > 0:
            self._cooldown -= 1
            self.excluded += 1
            return
        self._counter += 1
        if anomalous or self._counter % self.s.admit_every:
            return
        self._holding.append(values)
        if len(self._holding) > self._hold:
            self._admit(self._holding.popleft())

    def seed(self, windows: FloatArray) -> None:
        """The learning windows are the first older normal windows: without them, the
        fine-tunes before the recent buffer first overflows train on the latest windows
        alone and forget the operating points the machine has not visited since learning."""
        for values in windows:
            self._keep_in_reservoir(values.copy())  # a view would keep the whole set alive

    @property
    def cooling(self) -> bool:
        """Within the margin after an alert episode."""
        return self._cooldown > 0

    def split(self, holdout_share: float) -> tuple[FloatArray, FloatArray]:
        """Training windows, and the newest block of recent ones held out: windows next to
        a training window are near copies of it and would calibrate too low a threshold,
        so the admissions between the two that could share a step with both are dropped
        (windows of `length` steps, one admitted every `admit_every` at stride 1 or more)."""
        recent = list(self.recent)
        cut = len(recent) - max(1, round(len(recent) * holdout_share))
        gap = -(-(recent[0].shape[0] - 1) // self.s.admit_every)
        train = recent[: max(1, cut - gap)]
        return np.stack([*train, *self.reservoir]), np.stack(recent[cut:])

    def _admit(self, values: FloatArray) -> None:
        if len(self.recent) == self.recent.maxlen and self.s.reservoir_windows:
            self._keep_in_reservoir(self.recent[0])
        self.recent.append(values)
        self.new_since_fit += 1

    def _keep_in_reservoir(self, values: FloatArray) -> None:
        self._seen_evicted += 1
        if len(self.reservoir) < self.s.reservoir_windows:
            self.reservoir.append(values)
            return
        slot = int(self._rng.integers(self._seen_evicted))
        if slot < self.s.reservoir_windows:
            self.reservoir[slot] = values


class FineTuner(Worker):
    """Runs fit and fine-tune jobs one at a time and hands each result to `install`."""

    def __init__(
        self, settings: Settings, metrics: Metrics, install: Install, store: ModelStore | None
    ) -> None:
        super().__init__("finetuner", metrics)
        self.settings = settings
        self.store = store
        self.install = install
        self.jobs: queue.Queue[FitJob | FineTuneJob | None] = queue.Queue()
        self.busy = threading.Event()
        self.cancel = threading.Event()

    def submit(self, job: FitJob | FineTuneJob) -> None:
        self.jobs.put(job)

    def stop(self) -> None:
        """Ends the thread at the next training batch; queued jobs are dropped."""
        self.cancel.set()
        self.jobs.put(None)

    def work(self) -> None:
        # torch loads its optimizer machinery on the first Adam, which takes seconds: paid
        # here at start, a fit later reaches its first batch (where it can be cancelled) at
        # once, and a shutdown need not wait for that import.
        torch.optim.Adam([torch.zeros(1, requires_grad=True)])
        while (job := self.jobs.get()) is not None and not self.cancel.is_set():
            self.busy.set()
            try:
                self.handle(job)
            finally:
                self.busy.clear()

    def handle(self, job: FitJob | FineTuneJob) -> None:
        started = time.perf_counter()
        initial = isinstance(job, FitJob)
        try:
            result = self._fit(job) if isinstance(job, FitJob) else self._tune(job)
        except FitCancelledError:
            log.info("model_fit_cancelled", machine=job.machine)
            return
        except Exception:
            log.exception("model_fit_failed", machine=job.machine)
            result = Trained(None, "error")
        self.metrics.finetune_duration.observe(time.perf_counter() - started)
        if result.detector is not None and self.store is not None:
            result = self._persist(job.machine, result)
        self.metrics.finetune_runs.labels(machine=job.machine, outcome=result.outcome).inc()
        self.install(FitResult(job.machine, result.detector, initial))

    def _persist(self, machine: str, result: Trained) -> Trained:
        """A model is used only once it is on disk, so a restart resumes with it."""
        assert self.store is not None
        assert result.detector is not None
        try:
            result.detector.version = self.store.save(machine, result.detector, result.facts)
        except OSError:
            log.exception("model_save_failed", machine=machine)
            return Trained(None, "error")
        return result

    def _fit(self, job: FitJob) -> Trained:
        detector, report = fit_new(self.settings, job.sensors, job.windows, self.cancel)
        log.info(
            "model_fitted",
            machine=job.machine,
            windows=report.windows_train,
            windows_holdout=report.windows_holdout,
            loss=round(report.final_loss, 5),
            threshold=round(report.threshold, 5),
        )
        facts = TrainingFacts(
            reason="learned", windows=report.windows_train, final_loss=report.final_loss
        )
        return Trained(detector, "initial", facts)

    def _tune(self, job: FineTuneJob) -> Trained:
        """Trains a clone of the current model (same scaler, so errors stay comparable)
        and promotes it only through the gate."""
        s = self.settings
        candidate = job.current.clone()
        x = candidate.scaled(job.train)
        loss = train_model(candidate.model, x, s.model, s.finetune.epochs, self.cancel)
        current_error = float(np.mean(job.current.score_many(job.holdout)[0]))
        candidate_scores = candidate.score_many(job.holdout)[0]
        candidate_error = float(np.mean(candidate_scores))
        threshold = self._promoted_threshold(job, candidate, candidate_scores)
        caught = 1.0
        if len(job.episodes):
            caught = float(np.mean(candidate.score_many(job.episodes)[0] > threshold))
        passed = candidate_error <= current_error * (1 + s.finetune.tolerance) and (
            caught >= s.finetune.episode_recall
        )
        log.info(
            "finetune_gate",
            machine=job.machine,
            reason=job.reason,
            passed=passed,
            current_error=round(current_error, 5),
            candidate_error=round(candidate_error, 5),
            episode_windows=len(job.episodes),
            episodes_flagged=round(caught, 3),
            windows=len(job.train),
            threshold=round(job.current.threshold, 5),
            candidate_threshold=round(threshold, 5),
        )
        if not passed:
            return Trained(None, "rejected_gate")
        candidate.threshold = threshold
        candidate.version = job.current.version + 1
        parent = job.current.version or None
        facts = TrainingFacts(
            reason=job.reason, windows=len(job.train), final_loss=loss, parent=parent
        )
        return Trained(candidate, "promoted", facts)

    def _promoted_threshold(
        self, job: FineTuneJob, candidate: Detector, holdout_scores: FloatArray
    ) -> float:
        """Calibrated as a first fit is (held-out scores, floored by the training windows'
        own), then bounded by `promoted_threshold`; reaching the ceiling is logged."""
        t, f = self.settings.threshold, self.settings.finetune
        train_scores = candidate.score_many(job.train)[0]
        calibrated = max(calibrate(holdout_scores, t), calibrate(train_scores, t))
        current = job.current.threshold
        base = job.current.base_threshold or current
        threshold = promoted_threshold(current, base, calibrated, f)
        if calibrated > threshold >= base * f.threshold_ceiling:
            log.warning(
                "finetune_threshold_capped",
                machine=job.machine,
                calibrated=round(calibrated, 5),
                threshold=round(threshold, 5),
                base=round(base, 5),
            )
        return threshold


@dataclass
class Trained:
    """What a fit or fine-tune came to: a detector to install (None: keep the current one),
    the outcome counted, and the facts saved with the version."""

    detector: Detector | None
    outcome: str
    facts: TrainingFacts | None = None


def fit_new(
    settings: Settings,
    sensors: tuple[str, ...],
    windows: FloatArray,
    cancel: threading.Event | None = None,
    on_epoch: EpochCallback | None = None,
) -> tuple[Detector, FitReport]:
    """A detector fitted from scratch on normal `windows` (in time order), as version 1."""
    detector = Detector.new(sensors, settings.window.length, settings.model)
    report = detector.fit(windows, settings.threshold, cancel, on_epoch)
    detector.version = 1
    return detector, report

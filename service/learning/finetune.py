"""`FineTuner`: fits and refits models on its own thread, never on the pipeline's.

The pipeline knows it only as a `service.stream.learning.Learner`: it hands over requests
that refer to its windows and its current detector, and everything that costs (stacking
the windows, cloning the model, training, the gate, saving) happens here. The scorer and
the fine-tuner never share a torch module: a fine-tune trains its own clone and hands a
finished detector back through `install`.

A fine-tune must never teach a model that a fault is normal, so it trains only on windows
that scored clean, outside every alert episode and a margin around it
(`service.stream.training.TrainingBuffer`),
and the candidate must pass a gate: reconstruct held-out recent clean windows no worse
than the current model, and still flag the windows of the machine's recent episodes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import structlog
import torch

from service.core.config import Settings
from service.core.metrics import Metrics
from service.core.threads import Turns, Unpaced, Worker
from service.core.types import FitOutcome, FloatArray, TuneReason
from service.learning.store import ModelStore
from service.learning.store_meta import TrainingFacts
from service.scoring.detector import (
    BetweenBatches,
    Detector,
    EpochCallback,
    FitCancelledError,
    FitReport,
    train_model,
)
from service.scoring.latent import fit_map
from service.scoring.threshold import fitted_threshold, promoted_threshold
from service.stream.learning import FitRequest, FitResult, TuneRequest

log = structlog.get_logger(__name__)


Install = Callable[[FitResult], None]

# The longest a training batch waits for its turn beside the pipeline, a scrape's render
# first (`Lull`, background): a pipeline that never waits still hands turns over, so this
# bounds only a stalled pipeline or a scrape of more than this.
TURN_WAIT = 0.5


@dataclass(frozen=True)
class TuneJob:
    """A `TuneRequest` made into arrays, with its own copy of the current model."""

    machine: str
    current: Detector
    train: FloatArray
    holdout: FloatArray
    episodes: FloatArray
    reason: TuneReason

    @classmethod
    def of(cls, request: TuneRequest) -> TuneJob:
        empty = np.empty((0, *request.window_shape), np.float32)
        return cls(
            request.machine,
            request.current.clone(),
            np.stack(request.train),
            np.stack(request.holdout),
            np.stack(request.episodes) if request.episodes else empty,
            request.reason,
        )


class FineTuner(Worker):
    """Runs fit and fine-tune requests one at a time and hands each result to `install`
    (a `service.stream.learning.Learner`). Each training batch takes a turn beside the
    pipeline (`turns`: its `Lull`), so that scoring never waits on training's Python."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        install: Install,
        store: ModelStore | None,
        turns: Turns | None = None,
    ) -> None:
        super().__init__("finetuner", metrics)
        self.settings = settings
        self.store = store
        self.install = install
        self.turns = turns or Unpaced()
        self.jobs: queue.Queue[FitRequest | TuneRequest | None] = queue.Queue()
        self.busy = threading.Event()
        self.cancel = threading.Event()
        # Machines whose queued requests are skipped, until a new request of theirs.
        self._dropped: set[str] = set()
        self._lock = threading.Lock()

    def submit(self, request: FitRequest | TuneRequest) -> None:
        with self._lock:
            self._dropped.discard(request.machine)
            self.jobs.put(request)

    def drop(self, machine: str) -> None:
        with self._lock:
            self._dropped.add(machine)

    def _skipped(self, job: FitRequest | TuneRequest) -> bool:
        with self._lock:
            return job.machine in self._dropped

    def pending(self) -> int:
        return self.jobs.qsize()

    def stop(self, deadline: float) -> None:
        """Ends the thread at the next training batch; queued jobs are dropped. A fit stuck
        in torch (e.g. its first optimizer on a loaded box) cannot be interrupted: the
        caller's `join_until(deadline)` then gives up, and the daemon thread dies with the
        process (store writes are atomic, so nothing half-written becomes current)."""
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

    def handle(self, job: FitRequest | TuneRequest) -> None:
        if self._skipped(job):
            log.info("model_fit_skipped", machine=job.machine, reason="machine left")
            return
        started = time.perf_counter()
        initial = isinstance(job, FitRequest)
        try:
            result = self._fit(job) if isinstance(job, FitRequest) else self._tune(job)
        except FitCancelledError:
            log.info("model_fit_cancelled", machine=job.machine)
            return
        except Exception:
            log.exception("model_fit_failed", machine=job.machine)
            result = Trained(None, FitOutcome.ERROR)
        finally:
            self.turns.done()
        self.metrics.finetune_duration.observe(time.perf_counter() - started)
        if result.detector is not None and self.store is not None:
            result = self._persist(job.machine, result)
        self.metrics.finetune_runs.labels(machine=job.machine, outcome=result.outcome).inc()
        self.install(FitResult(job.machine, result.detector, initial, result.outcome))

    def _persist(self, machine: str, result: Trained) -> Trained:
        """A model is used only once it is on disk, so a restart resumes with it."""
        assert self.store is not None
        assert result.detector is not None
        try:
            result.detector.version = self.store.save(machine, result.detector, result.facts)
        except OSError:
            log.exception("model_save_failed", machine=machine)
            return Trained(None, FitOutcome.ERROR)
        return result

    def _turn(self) -> None:
        """Waits for a turn beside the pipeline; stops the fit when the daemon stops."""
        if self.cancel.is_set():
            raise FitCancelledError
        self.turns.wait(TURN_WAIT, background=True)

    def _fit(self, job: FitRequest) -> Trained:
        windows = np.stack(job.windows)
        detector, report = fit_new(self.settings, job.sensors, windows, self._turn)
        log.info(
            "model_fitted",
            machine=job.machine,
            windows=report.windows_train,
            windows_holdout=report.windows_holdout,
            loss=round(report.final_loss, 5),
            threshold=round(report.threshold, 5),
        )
        facts = TrainingFacts(
            reason=job.reason, windows=report.windows_train, final_loss=report.final_loss
        )
        return Trained(detector, FitOutcome.INITIAL, facts)

    def _tune(self, request: TuneRequest) -> Trained:
        self._turn()  # stacking the windows and cloning the model are Python too
        return tune(self.settings, TuneJob.of(request), self._turn)


@dataclass
class Trained:
    """What a fit or fine-tune came to: a detector to install (None: keep the current one),
    the outcome counted, and the facts saved with the version."""

    detector: Detector | None
    outcome: FitOutcome
    facts: TrainingFacts | None = None


def tune(settings: Settings, job: TuneJob, between: BetweenBatches | None = None) -> Trained:
    """Trains a clone of the current model (same scaler, so errors stay comparable)
    and promotes it only through the gate. `between()` runs before each training batch,
    the gate and the map."""
    turn = between or _no_turn
    s = settings
    candidate = job.current.clone()
    x = candidate.scaled(job.train)
    loss = train_model(candidate.model, x, s.model, s.finetune.epochs, turn)
    turn()
    current_error = float(np.mean(job.current.score_many(job.holdout)[0]))
    candidate_scores = candidate.score_many(job.holdout)[0]
    candidate_error = float(np.mean(candidate_scores))
    threshold = _promoted_threshold(settings, job, candidate, candidate_scores)
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
        return Trained(None, FitOutcome.REJECTED_GATE)
    candidate.threshold = threshold
    candidate.version = job.current.version + 1
    turn()
    candidate.latent_map = fit_map(candidate, job.train)
    parent = job.current.version or None
    facts = TrainingFacts(reason=job.reason, windows=len(job.train), final_loss=loss, parent=parent)
    return Trained(candidate, FitOutcome.PROMOTED, facts)


def _no_turn() -> None:
    pass


def _promoted_threshold(
    settings: Settings, job: TuneJob, candidate: Detector, holdout_scores: FloatArray
) -> float:
    """Calibrated as a first fit is (held-out scores, floored by the training windows'
    own quantile: `fitted_threshold`), then bounded by `promoted_threshold`; reaching the
    ceiling is logged."""
    t, f = settings.threshold, settings.finetune
    train_scores = candidate.score_many(job.train)[0]
    calibrated = fitted_threshold(holdout_scores, train_scores, t)
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


def fit_new(
    settings: Settings,
    sensors: tuple[str, ...],
    windows: FloatArray,
    between: BetweenBatches | None = None,
    on_epoch: EpochCallback | None = None,
) -> tuple[Detector, FitReport]:
    """A detector fitted from scratch on normal `windows` (in time order), as version 1."""
    detector = Detector.new(sensors, settings.window.length, settings.model)
    report = detector.fit(windows, settings.threshold, between, on_epoch)
    detector.version = 1
    return detector, report

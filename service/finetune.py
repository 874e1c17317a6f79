"""`FineTuner`: fits and refits models on its own thread, never on the pipeline's.

The scorer and the fine-tuner never share a torch module: the fine-tuner builds or clones a
detector, trains that copy, and hands the finished one over through `install`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from service.config import Settings
from service.detector import Detector, FitCancelledError
from service.metrics import Metrics
from service.threads import Worker
from service.types import FloatArray

log = structlog.get_logger(__name__)

Install = Callable[[str, Detector | None], None]


@dataclass(frozen=True)
class FitJob:
    machine: str
    sensors: tuple[str, ...]
    windows: FloatArray


class FineTuner(Worker):
    """Runs fit jobs one at a time; `install(machine, detector)` receives each result
    (None when the fit failed, so the machine can learn again)."""

    def __init__(self, settings: Settings, metrics: Metrics, install: Install) -> None:
        super().__init__("finetuner", metrics)
        self.settings = settings
        self.install = install
        self.jobs: queue.Queue[FitJob | None] = queue.Queue()
        self.busy = threading.Event()
        self.cancel = threading.Event()

    def submit_initial_fit(
        self, machine: str, sensors: tuple[str, ...], windows: FloatArray
    ) -> None:
        self.jobs.put(FitJob(machine, sensors, windows))

    def stop(self) -> None:
        """Ends the thread at the next training batch; queued fits are dropped (their
        machines learn again after a restart)."""
        self.cancel.set()
        self.jobs.put(None)

    def work(self) -> None:
        while (job := self.jobs.get()) is not None and not self.cancel.is_set():
            self.busy.set()
            try:
                self.install(job.machine, self._fit(job))
            finally:
                self.busy.clear()

    def _fit(self, job: FitJob) -> Detector | None:
        started = time.perf_counter()
        try:
            detector = Detector.new(job.sensors, self.settings.window.length, self.settings.model)
            report = detector.fit(job.windows, self.settings.threshold, self.cancel)
        except FitCancelledError:
            log.info("model_fit_cancelled", machine=job.machine)
            return None
        except Exception:
            log.exception("model_fit_failed", machine=job.machine, windows=len(job.windows))
            self.metrics.finetune_runs.labels(machine=job.machine, outcome="error").inc()
            return None
        elapsed = time.perf_counter() - started
        detector.version = 1
        self.metrics.finetune_duration.observe(elapsed)
        self.metrics.finetune_runs.labels(machine=job.machine, outcome="initial").inc()
        log.info(
            "model_fitted",
            machine=job.machine,
            windows_train=report.windows_train,
            windows_holdout=report.windows_holdout,
            loss=round(report.final_loss, 5),
            threshold=round(report.threshold, 5),
            seconds=round(elapsed, 2),
        )
        return detector

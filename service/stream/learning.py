"""The pipeline's one door to learning: the requests it hands over and the results it
takes back. The fine-tuner implements `Learner`; the app wires it in.

Requests carry little: what can leave the pipeline thread does. A request's windows are
the training buffer's, copied out in one block per set (its arrays are written again by
later admissions; 600 windows of 30 x 8 are one 0.6 MB copy), and the current detector
itself; stacking the windows into training arrays and cloning the model happen on the
learner's thread (building a plant's jobs on the pipeline thread stalled a cycle for 2 s
at 1,000 machines). That is safe because neither is changed after it is handed over: the
copies are the request's own, and an installed detector's weights are only read by
scoring until a new detector replaces it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from service.core.types import FitOutcome, FloatArray, TuneReason
from service.scoring.detector import Detector


@dataclass(frozen=True)
class FitRequest:
    """Fit a first model from a machine's learning windows, in time order."""

    machine: str
    sensors: tuple[str, ...]
    windows: list[FloatArray]  # each [time, sensors]
    reason: str = "learned"  # or "relearn": an operator asked for it


@dataclass(frozen=True)
class TuneRequest:
    """Fine-tune the machine's current model on its clean windows, through the gate."""

    machine: str
    current: Detector  # the one scoring: the learner trains a clone of it
    train: list[FloatArray]
    holdout: list[FloatArray]
    episodes: list[FloatArray]  # windows of recent alert episodes, for the gate
    window_shape: tuple[int, int]  # [time, sensors] of a window, for empty sets
    reason: TuneReason = TuneReason.INTERVAL


@dataclass(frozen=True)
class FitResult:
    """What a request gives back: a detector to install (None: keep the current one)."""

    machine: str
    detector: Detector | None
    initial: bool
    outcome: FitOutcome | None = None


class Learner(Protocol):
    def submit(self, request: FitRequest | TuneRequest) -> None:
        """Queues a request; its result comes back through the install callback."""

    def pending(self) -> int:
        """Requests queued and not yet started."""

    def drop(self, machine: str) -> None:
        """Requests of `machine` queued now are not carried out (it moved to another
        replica, or was forgotten); a request submitted later is."""


class SavedModels(Protocol):
    """Where a machine's current model is read from when it is added
    (`service.learning.store.ModelStore`); `unusable` counts versions that failed to load."""

    unusable: Counter[str]

    def machines(self) -> list[str]: ...

    def load_current(self, machine: str) -> Detector | None: ...

    def forget(self, machine: str) -> Path | None:
        """Moves the machine's versions aside; where to, if it had any."""

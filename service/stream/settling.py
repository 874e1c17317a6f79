"""`Settling`: whether a firing alert's windows have stopped changing, a new normal.

A machine can leave a fault, a repair or a new set-point in a state that is steady but
unlike anything it learnt: its alert would fire for ever. Once every sensor's level (a
window's mean) has held within `band` of its mean over the stretch (in units of the
sensor's spread while learning; against the mean, not one noisy window) for `after`
seconds of event time, the state has settled and the model may re-baseline on it, through the
fine-tune gate (service.stream.machines). A fault that keeps evolving moves some level out
of the band and restarts the count, so it never becomes training data; a settled state
that scores far above the threshold is refused by the gate, whose episode windows it fills.

>>> import numpy as np
>>> s = Settling(after=10.0, band=1.0, keep_every=1, keep=100)
>>> flat = np.zeros((5, 2), np.float32)
>>> [s.observe(float(t), flat, np.ones(2)) for t in (0, 5, 10)]
[False, False, True]
>>> s.observe(11.0, flat, np.ones(2))  # said once a stretch
False
>>> s.observe(12.0, flat + 3, np.ones(2)), s.started_at  # a level moved: a new stretch
(False, 12.0)
"""

from __future__ import annotations

from collections import deque

import numpy as np

from service.core.types import FloatArray


class Settling:
    """Follows one firing alert's windows; `observe` says once when they have settled."""

    def __init__(self, after: float, band: float, keep_every: int, keep: int) -> None:
        self.after, self.band, self.keep_every = after, band, keep_every
        self.windows: deque[FloatArray] = deque(maxlen=keep)  # of the steady stretch
        self.started_at: float | None = None
        self._total: FloatArray | None = None  # of the stretch's levels, for their mean
        self._seen = 0
        self._said = False

    def reset(self) -> None:
        self.windows.clear()
        self.started_at = None
        self._total = None
        self._seen = 0
        self._said = False

    def observe(self, end_ts: float, values: FloatArray, spread: FloatArray) -> bool:
        """Takes a window of the firing alert (`spread`: each sensor's learning spread);
        True the first time its stretch has held steady for `after` seconds."""
        level = values.mean(axis=0)
        if self._total is None or self._moved(level - self._total / self._seen, values, spread):
            self.reset()
            self._total = np.zeros_like(level)
            self.started_at = end_ts
        if self._seen % self.keep_every == 0:
            self.windows.append(values)
        self._total += level
        self._seen += 1
        assert self.started_at is not None
        if self._said or end_ts - self.started_at < self.after:
            return False
        self._said = True
        return True

    def _moved(self, shift: FloatArray, values: FloatArray, spread: FloatArray) -> bool:
        # A fault that adds noise is still steady if its level holds: against the larger
        # of the learning spread and the window's own.
        return bool(np.max(np.abs(shift) / np.maximum(spread, values.std(axis=0))) > self.band)

"""Which scored windows a machine may learn from: `TrainingBuffer`, on the pipeline thread.

It only chooses and keeps references to windows; the learner stacks them into training
sets on its own thread (service.stream.learning).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from service.core.config import FinetuneSettings
from service.core.types import FloatArray


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
        # The latest episode's windows (those that led up to it, its own, its margin after),
        # kept until the next one: an operator may still call it a false alarm.
        self._episode_windows: deque[FloatArray] = deque(maxlen=settings.recent_windows)
        self._in_episode = False

    def observe(
        self, values: FloatArray, score: float, threshold: float, alert_active: bool
    ) -> None:
        anomalous = score > threshold
        if alert_active:
            if not self._in_episode:
                self._episode_windows.clear()
                self._in_episode = True
            self.excluded += len(self._holding) + 1
            self._episode_windows.extend(self._holding)
            self._episode_windows.append(values)
            self._holding.clear()
            self._cooldown = self.s.margin_windows
            if score >= threshold * self.s.episode_factor:
                self.episodes.append(values)
            return
        self._in_episode = False
        if self._cooldown > 0:
            self._cooldown -= 1
            self.excluded += 1
            self._episode_windows.append(values)
            return
        self._counter += 1
        if anomalous or self._counter % self.s.admit_every:
            return
        self._holding.append(values)
        if len(self._holding) > self._hold:
            self._admit(self._holding.popleft())

    def release_episode(self) -> int:
        """An operator said the latest episode was a false alarm: its windows become normal
        data (every `admit_every`-th, as any other), they no longer count as windows the
        gate wants flagged, and the margin after it ends. Returns the windows admitted."""
        released = list(self._episode_windows)
        self._episode_windows.clear()
        ids = {id(w) for w in released}
        self.episodes = deque(
            (w for w in self.episodes if id(w) not in ids), maxlen=self.episodes.maxlen
        )
        self._cooldown = 0
        admitted = released[:: self.s.admit_every]
        for values in admitted:
            self._admit(values)
        return len(admitted)

    def seed(self, windows: list[FloatArray]) -> None:
        """The learning windows are the first older normal windows: without them, the
        fine-tunes before the recent buffer first overflows train on the latest windows
        alone and forget the operating points the machine has not visited since learning."""
        for values in windows:
            self._keep_in_reservoir(values)

    @property
    def cooling(self) -> bool:
        """Within the margin after an alert episode."""
        return self._cooldown > 0

    def split(self, holdout_share: float) -> tuple[list[FloatArray], list[FloatArray]]:
        """Training windows, and the newest block of recent ones held out: windows next to
        a training window are near copies of it and would calibrate too low a threshold,
        so the admissions between the two that could share a step with both are dropped
        (windows of `length` steps, one admitted every `admit_every` at stride 1 or more)."""
        recent, older = list(self.recent), self.reservoir
        if len(recent) < 2:
            # Right after learning (a re-baselining may come before any clean window): the
            # learning windows stand in for recent ones.
            recent, older = [*older, *recent], []
        cut = len(recent) - max(1, round(len(recent) * holdout_share))
        gap = -(-(recent[0].shape[0] - 1) // self.s.admit_every)
        train = recent[: max(1, cut - gap)]
        return [*train, *older], recent[cut:]

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

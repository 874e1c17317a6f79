"""Which scored windows a machine may learn from: `TrainingBuffer`, on the pipeline thread.

It chooses windows and keeps the recent and the reservoir ones by copy: the recent ones as
the grid steps they cover (`WindowRing`: admitted windows overlap), the reservoir's in one
array (`WindowSlots`); a request takes them out in one copy per set, which the learner
stacks into training sets on its own thread (service.stream.learning).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from service.core.config import FinetuneSettings
from service.core.types import FloatArray


class WindowSlots:
    """Up to `capacity` windows of one shape, copied into one array made at the first window.

    A window as an array of its own costs its numbers plus ~240 bytes of Python object,
    shape and allocator overhead (20 x 8 float32: 879 bytes for 640 of numbers, measured
    with tracemalloc), and the buffers of a plant hold hundreds of them a machine, each
    freed at its own time between others that live on. One array a set holds the numbers
    alone, in one allocation."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._values: FloatArray | None = None

    def put(self, slot: int, values: FloatArray) -> None:
        if self._values is None or self._values.shape[1:] != values.shape:
            self._values = np.empty((self.capacity, *values.shape), np.float32)
        self._values[slot] = values

    def view(self, slot: int) -> FloatArray:
        """The window in `slot`, as a view: valid until the slot is written again."""
        assert self._values is not None
        view: FloatArray = self._values[slot]
        return view

    def copy(self, slots: list[int]) -> FloatArray:
        """The windows of `slots`, in that order, as one new array `[n, time, sensors]`."""
        if self._values is None:
            return np.empty((0, 0, 0), np.float32)
        taken: FloatArray = self._values[slots]
        return taken


class WindowRing:
    """The newest `capacity` windows of one shape, oldest first, kept as the rows (grid
    steps) they cover in one ring of rows.

    Admitted windows overlap: one in `admit_every` of windows `stride` steps apart, so
    consecutive ones share `length - step` rows (`step` = admit_every x stride). A window
    whose first rows are the previous one's last ones (by value) adds only its new rows;
    any other adds all of its own. Contiguous windows take `capacity x step + length - step`
    rows instead of `capacity x length` (the latency benchmark's 60 windows of 20 steps
    admitted at every step: 79 rows instead of 1,200; the defaults' 400 of 30 every 10:
    4,020 instead of 12,000). Windows with breaks between them need more: the ring grows
    to what they need, at most `capacity x length` rows, and keeps that size."""

    def __init__(self, capacity: int, step: int) -> None:
        self.capacity = capacity
        self.step = step
        self._rows: FloatArray | None = None
        self._starts: deque[int] = deque()  # each window's first row, counted since the start
        self._head = 0  # the next row to write, counted since the start
        self._length = 0

    def __len__(self) -> int:
        return len(self._starts)

    @property
    def rows(self) -> int:
        """Rows the ring holds room for."""
        return 0 if self._rows is None else len(self._rows)

    @property
    def nbytes(self) -> int:
        return 0 if self._rows is None else self._rows.nbytes

    def append(self, values: FloatArray) -> None:
        """Keeps `values` as the newest window (a copy); the oldest goes when full."""
        if self._rows is None or (len(values), *self._rows.shape[1:]) != values.shape:
            self._start(values)
        assert self._rows is not None
        new = self._new_rows(values)
        if len(self._starts) == self.capacity:
            self._starts.popleft()
        start = self._head + len(new) - self._length
        first = min(self._starts[0], start) if self._starts else start  # the oldest row kept
        if self._head - first + len(new) > len(self._rows):
            self._grow(first, self._head - first + len(new))
        self._write(new)
        self._starts.append(start)

    def window(self, index: int) -> FloatArray:
        """The window at `index` (0: the oldest), as a new array."""
        return self._between(self._starts[index], self._starts[index] + self._length)

    def stacked(self) -> FloatArray:
        """Every window, oldest first, as one new array `[n, time, sensors]`."""
        if self._rows is None or not self._starts:
            return np.empty((0, 0, 0), np.float32)
        at = np.add.outer(np.fromiter(self._starts, np.int64), np.arange(self._length))
        windows: FloatArray = self._rows[at % len(self._rows)]
        return windows

    def _start(self, values: FloatArray) -> None:
        self._length = len(values)
        shared = max(0, self._length - self.step)
        rows = self.capacity * (self._length - shared) + shared
        self._rows = np.empty((rows, *values.shape[1:]), np.float32)
        self._starts.clear()
        self._head = 0

    def _new_rows(self, values: FloatArray) -> FloatArray:
        # The newest window ends at the head: its last `shared` rows are the ring's last.
        shared = self._length - self.step
        if self._starts and shared > 0:
            held = self._between(self._head - shared, self._head)
            if np.array_equal(held, values[:shared], equal_nan=True):
                return values[shared:]
        return values

    def _between(self, first: int, stop: int) -> FloatArray:
        """Rows `first` to `stop` (counted since the start), as a new array."""
        assert self._rows is not None
        rows: FloatArray = self._rows[np.arange(first, stop) % len(self._rows)]
        return rows

    def _grow(self, first: int, needed: int) -> None:
        assert self._rows is not None
        size = min(max(needed, 2 * len(self._rows)), self.capacity * self._length)
        rows = np.empty((size, *self._rows.shape[1:]), np.float32)
        rows[np.arange(first, self._head) % size] = self._between(first, self._head)
        self._rows = rows

    def _write(self, new: FloatArray) -> None:
        assert self._rows is not None
        at = np.arange(self._head, self._head + len(new)) % len(self._rows)
        self._rows[at] = new
        self._head += len(new)


class TrainingBuffer:
    """One machine's clean windows for fine-tuning, kept on the pipeline thread.

    Windows wait in a holding line of `margin` admissions before they are admitted, so
    when an alert starts, the windows that led up to it are dropped too; after an episode
    the next `margin` windows are dropped as well. Admitted windows go to a bounded recent
    buffer; the learning windows and those the recent buffer evicts are reservoir-sampled,
    so older normal operation is not forgotten. Anomalous windows of episodes are kept for
    the gate. The recent and reservoir windows are copies (`WindowRing`, `WindowSlots`),
    the others references to the windows' own arrays.
    """

    def __init__(self, settings: FinetuneSettings, seed: int = 0, stride: int = 1) -> None:
        """`stride`: grid steps between the windows observed (`window.stride`)."""
        self.s = settings
        hold = -(-settings.margin_windows // settings.admit_every)
        self._holding: deque[FloatArray] = deque()
        self._hold = hold
        self._cooldown = 0
        self._counter = 0
        self._seen_evicted = 0
        self._rng = np.random.default_rng(seed)
        self._recent = WindowRing(settings.recent_windows, settings.admit_every * stride)
        self._reservoir = WindowSlots(settings.reservoir_windows)
        self._reservoir_kept = 0
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
    def recent(self) -> list[FloatArray]:
        """The recent windows, oldest first (copies)."""
        return list(self._recent.stacked())

    @property
    def reservoir(self) -> list[FloatArray]:
        """The reservoir's windows (views: valid until the next admission)."""
        return [self._reservoir.view(slot) for slot in range(self._reservoir_kept)]

    @property
    def kept(self) -> int:
        """Recent and reservoir windows held."""
        return len(self._recent) + self._reservoir_kept

    @property
    def cooling(self) -> bool:
        """Within the margin after an alert episode."""
        return self._cooldown > 0

    def split(self, holdout_share: float) -> tuple[list[FloatArray], list[FloatArray]]:
        """Training windows, and the newest block of recent ones held out: windows next to
        a training window are near copies of it and would calibrate too low a threshold,
        so the admissions between the two that could share a step with both are dropped
        (windows of `length` steps, one admitted every `admit_every` at stride 1 or more)."""
        # Copies (views of one new array per set): the buffer's arrays are written again
        # while the learner works on its own thread.
        recent = list(self._recent.stacked())
        older = list(self._reservoir.copy(list(range(self._reservoir_kept))))
        if len(recent) < 2:
            # Right after learning (a re-baselining may come before any clean window): the
            # learning windows stand in for recent ones.
            recent, older = [*older, *recent], []
        cut = len(recent) - max(1, round(len(recent) * holdout_share))
        gap = -(-(recent[0].shape[0] - 1) // self.s.admit_every)
        train = recent[: max(1, cut - gap)]
        return [*train, *older], recent[cut:]

    def _admit(self, values: FloatArray) -> None:
        if len(self._recent) == self._recent.capacity and self.s.reservoir_windows:
            self._keep_in_reservoir(self._recent.window(0))  # the oldest, evicted
        self._recent.append(values)
        self.new_since_fit += 1

    def _keep_in_reservoir(self, values: FloatArray) -> None:
        self._seen_evicted += 1
        if self._reservoir_kept < self.s.reservoir_windows:
            self._reservoir.put(self._reservoir_kept, values)
            self._reservoir_kept += 1
            return
        slot = int(self._rng.integers(self._seen_evicted))
        if slot < self.s.reservoir_windows:
            self._reservoir.put(slot, values)

"""Per-machine resampling onto a fixed time grid, and sliding windows over it.

Each sensor's last value is held onto the grid for at most `max_stale` seconds; a grid
step where any sensor is staler is a gap, and a gap restarts the window. Readings may
arrive out of order by up to `lateness` seconds behind the machine's newest reading (event
time, never the wall clock, so history can be replayed); older ones are `late`.

Two sensors at 1 s, windows of 3 steps:

>>> w = MachineWindower("m", ("a", "b"), period=1.0, length=3, stride=1, max_stale=1.5,
...                     lateness=0.0)
>>> for t in range(5):
...     _ = w.add(Reading("m", "a", t, t)), w.add(Reading("m", "b", t, 10 * t))
>>> [(x.end_ts, x.values[:, 0].tolist()) for x in w.advance()]
[(2.0, [0.0, 1.0, 2.0]), (3.0, [1.0, 2.0, 3.0]), (4.0, [2.0, 3.0, 4.0])]

Out of order within the tolerance is fine; behind the last emitted step it is late:

>>> w = MachineWindower("m", ("a",), 1.0, 2, 1, 1.5, lateness=2.0)
>>> [w.add(Reading("m", "a", t, t)) for t in (0, 2, 1, 3, 4)]
[None, None, None, None, None]
>>> [x.end_ts for x in w.advance()]
[1.0, 2.0]
>>> w.add(Reading("m", "a", 1.5, 0.0)).reason.value
'late'
>>> w.add(Reading("m", "a", 4, 4.0)).reason.value
'duplicate'

A value is held for `max_stale` (step 3 uses the reading at 2); a longer gap restarts:

>>> w = MachineWindower("m", ("a",), 1.0, 2, 1, 1.5, lateness=0.0)
>>> for t in (0, 1, 2, 10, 11, 12):
...     _ = w.add(Reading("m", "a", t, t))
>>> [x.end_ts for x in w.advance()], w.gaps
([1.0, 2.0, 3.0, 11.0, 12.0], 1)
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from operator import itemgetter

import numpy as np

from service.core.types import FloatArray, Reading, Rejection, RejectReason, Row, Window

_TS = itemgetter(0)


class MachineWindower:
    """Turns one machine's readings into windows `[length, sensors]` on a `period` grid."""

    def __init__(
        self,
        machine: str,
        sensors: tuple[str, ...],
        period: float,
        length: int,
        stride: int,
        max_stale: float,
        lateness: float,
    ) -> None:
        self.machine = machine
        self.sensors = sensors
        self.period = period
        self.length = length
        self.stride = stride
        self.max_stale = max_stale
        self.lateness = lateness
        self._index = {s: i for i, s in enumerate(sensors)}
        self._pending: list[list[tuple[float, float]]] = [[] for _ in sensors]
        # Whole rows (ts, every sensor's value in `sensors` order), oldest first, all newer
        # than every per-sensor pending reading: a batch's records cost one entry each
        # instead of one per value. A reading taken one by one first spills them into
        # `_pending` (`_spill`), which they stand for.
        self._pending_rows: list[tuple[float, tuple[float, ...]]] = []
        self._row_of: Callable[[dict[str, float]], tuple[float, ...]] = _values_getter(sensors)
        # Plain lists: a machine has a handful of sensors, where numpy's per-call cost
        # exceeds the work.
        self._held_ts = [-math.inf] * len(sensors)
        self._held_value = [0.0] * len(sensors)
        # The last `length` rows, each written twice (at i and i + length), so that the
        # newest window is always one contiguous slice: a copy, not a stack of rows.
        self._ring = np.zeros((2 * length, len(sensors)), dtype=np.float32)
        self._next_row = 0
        self._rows = 0  # rows since the last restart, up to `length`
        self._until_next_window = 0
        self._next_tick: float | None = None
        self.last_tick = -math.inf
        self.newest_ts = -math.inf
        self.gaps = 0

    def add(self, reading: Reading) -> Rejection | None:
        """Takes a reading onto the grid, or says why not."""
        if self._pending_rows:
            self._spill()
        i = self._index.get(reading.sensor)
        if i is None:
            return Rejection(RejectReason.UNKNOWN_SENSOR, reading.sensor, self.machine)
        pending = self._pending[i]
        ts = reading.ts
        # Pending readings are all newer than the held one, so a reading newer than every
        # pending one (the usual, in-order case) can be a duplicate of neither.
        in_order = not pending or ts > pending[-1][0]
        if ts == self._held_ts[i] or (not in_order and _contains_ts(pending, ts)):
            return Rejection(RejectReason.DUPLICATE, f"{reading.sensor}@{ts}", self.machine)
        if ts <= self.last_tick:
            behind = self.newest_ts - ts
            return Rejection(
                RejectReason.LATE, f"{reading.sensor}: {behind:.1f} s behind", self.machine
            )
        if in_order:
            pending.append((ts, reading.value))
        else:
            bisect.insort(pending, (ts, reading.value))
        self.newest_ts = max(self.newest_ts, ts)
        return None

    def add_many(self, readings: list[Reading]) -> list[Rejection]:
        """`add` for many readings; returns the rejections. The usual reading (a known
        sensor, newer than all it has pending, than its held value and the last step) is
        appended inline; any other goes through `add`, which decides the rest."""
        if self._pending_rows:
            self._spill()
        rejections: list[Rejection] = []
        index, pendings, held, last_tick = self._index, self._pending, self._held_ts, self.last_tick
        newest = self.newest_ts
        for reading in readings:
            _, sensor, ts, value = reading
            i = index.get(sensor)
            if i is not None:
                pending = pendings[i]
                if ts > last_tick and ts != held[i] and (not pending or ts > pending[-1][0]):
                    pending.append((ts, value))
                    newest = ts if ts > newest else newest  # max() is a call per reading
                    continue
            self.newest_ts = newest
            rejection = self.add(reading)
            newest = self.newest_ts
            if rejection is not None:
                rejections.append(rejection)
        self.newest_ts = newest
        return rejections

    def add_rows(self, rows: list[Row]) -> list[Rejection]:
        """Takes whole records, as `add` would take each of their values in turn (in the
        order of its `values`), and returns the rejections. A row newer than everything
        the windower holds with a value for exactly its sensors is queued as it is; any
        other row goes through `add_many`, value by value, which decides the rest."""
        rejections: list[Rejection] = []
        queued, row_of, width = self._pending_rows, self._row_of, len(self.sensors)
        for row in rows:
            ts, values = row
            # Newer than newest_ts: newer than every pending and held reading, so no value
            # can be a duplicate or out of order; newer than the last step: not late.
            if ts > self.newest_ts and ts > self.last_tick and len(values) == width:
                try:
                    queued.append((ts, row_of(values)))
                except KeyError:
                    pass  # a sensor of another name: not a full row
                else:
                    self.newest_ts = ts
                    continue
            rejections += self.add_many(row.readings(self.machine))
        return rejections

    def _spill(self) -> None:
        """The queued rows as per-sensor pending readings, which they are newer than."""
        for ts, values in self._pending_rows:
            for pending, value in zip(self._pending, values, strict=True):
                pending.append((ts, value))
        self._pending_rows = []

    def advance(self) -> list[Window]:
        """Emits the grid steps that no allowed late reading can change any more."""
        watermark = self.newest_ts - self.lateness
        if self._next_tick is None:
            self._spill()
            first = min((p[0][0] for p in self._pending if p), default=math.inf)
            if not math.isfinite(first):
                return []
            self._next_tick = math.ceil(first / self.period) * self.period
        windows: list[Window] = []
        while self._next_tick <= watermark:
            if self._pending_rows and self._advance_rows(watermark, windows):
                continue
            tick = self._next_tick
            self._hold_until(tick)
            oldest = min(self._held_ts, default=math.inf)
            if tick - oldest <= self.max_stale:
                window = self._append_row(tick)
                if window is not None:
                    windows.append(window)
                self._next_tick = tick + self.period
            else:
                self._restart()
                self._next_tick = self._next_possible_tick(tick, watermark)
            self.last_tick = tick
        return windows

    def _advance_rows(self, watermark: float, windows: list[Window]) -> bool:
        """The steps from the next one on that each take exactly one queued row, fresh
        enough to be no gap (a batch's usual case), all at once: their rows become one
        array and their windows slices of it, instead of a row written and a window cut
        per step. Stops before any other step, which `advance` takes one by one; False if
        the next step is such a step. Each step's outcome is the one-by-one loop's."""
        rows, period, max_stale = self._pending_rows, self.period, self.max_stale
        tick = self._next_tick
        assert tick is not None
        taken: list[tuple[float, ...]] = []
        ticks: list[float] = []
        k = 0
        while tick <= watermark and k < len(rows):
            ts = rows[k][0]
            if ts > tick or tick - ts > max_stale or (k + 1 < len(rows) and rows[k + 1][0] <= tick):
                break
            taken.append(rows[k][1])
            ticks.append(tick)
            k += 1
            tick = tick + period
        if not k:
            return False
        last_ts, last_values = rows[k - 1]
        del rows[:k]
        # Every per-sensor reading is older than the rows: held over by the first of them.
        for pending in self._pending:
            pending.clear()
        self._held_ts = [last_ts] * len(last_values)
        self._held_value = list(last_values)
        self._emit(np.array(taken, dtype=np.float32), ticks, windows)
        self._next_tick = tick
        self.last_tick = ticks[-1]
        return True

    def _emit(self, block: FloatArray, ticks: list[float], windows: list[Window]) -> None:
        """Appends `block`'s rows (one per tick) to the ring, and the windows they complete
        to `windows`, as `_append_row` would for each."""
        length = self.length
        # The newest `length - 1` rows, oldest first, then the new ones.
        start = self._next_row + 1
        rows = np.concatenate((self._ring[start : start + length - 1], block))
        for j, tick in enumerate(ticks):
            if self._count_row():
                windows.append(
                    Window(self.machine, tick, self.sensors, rows[j : j + length].copy())
                )
        self._ring[:length] = self._ring[length:] = rows[-length:]
        self._next_row = 0

    def _hold_until(self, tick: float) -> None:
        rows = self._pending_rows
        if rows and rows[0][0] <= tick:
            self._hold_row(tick)
            return
        for i, pending in enumerate(self._pending):
            if not pending or pending[0][0] > tick:
                continue
            # Usually one reading per sensor and step: no search needed.
            if len(pending) == 1 or pending[1][0] > tick:
                self._held_ts[i], self._held_value[i] = pending.pop(0)
                continue
            taken = bisect.bisect_right(pending, (tick, math.inf))
            self._held_ts[i], self._held_value[i] = pending[taken - 1]
            del pending[:taken]

    def _hold_row(self, tick: float) -> None:
        """The newest queued row at or before `tick` holds every sensor: the per-sensor
        pending readings are all older than it, so none of them is held any more."""
        rows = self._pending_rows
        taken = (
            1 if len(rows) == 1 or rows[1][0] > tick else bisect.bisect_right(rows, tick, key=_TS)
        )
        ts, values = rows[taken - 1]
        del rows[:taken]
        self._held_ts = [ts] * len(values)
        self._held_value = list(values)
        if any(self._pending):
            for pending in self._pending:
                pending.clear()

    def _count_row(self) -> bool:
        """Counts one more row on the grid; whether it completes a window (every `stride`
        rows once `length` rows are in)."""
        self._rows = min(self._rows + 1, self.length)
        if self._rows < self.length:
            return False
        if self._until_next_window > 0:
            self._until_next_window -= 1
            return False
        self._until_next_window = self.stride - 1
        return True

    def _append_row(self, tick: float) -> Window | None:
        row = self._next_row
        self._ring[row] = self._ring[row + self.length] = self._held_value
        self._next_row = (row + 1) % self.length
        if not self._count_row():
            return None
        values = self._ring[self._next_row : self._next_row + self.length].copy()
        return Window(self.machine, tick, self.sensors, values)

    def _restart(self) -> None:
        if self._rows:
            self.gaps += 1
        self._rows = 0
        self._until_next_window = 0

    def _next_possible_tick(self, tick: float, watermark: float) -> float:
        """After a gap, the first grid step at which every stale sensor could have a value:
        skipping there keeps a clock jump of hours from costing a loop step per second."""
        self._spill()
        candidate = tick + self.period
        for i, pending in enumerate(self._pending):
            if candidate - self._held_ts[i] <= self.max_stale:
                continue
            if not pending:
                # Nothing can make this sensor fresh before the watermark: wait past it.
                beyond = math.floor(watermark / self.period) * self.period + self.period
                return max(candidate, beyond)
            candidate = max(candidate, math.ceil(pending[0][0] / self.period) * self.period)
        return candidate


def _contains_ts(pending: list[tuple[float, float]], ts: float) -> bool:
    i = bisect.bisect_left(pending, (ts, -math.inf))
    return i < len(pending) and pending[i][0] == ts


def _values_getter(sensors: tuple[str, ...]) -> Callable[[dict[str, float]], tuple[float, ...]]:
    """A record's values in `sensors` order, as a tuple (KeyError for a missing sensor):
    one C-level call per row, where a comprehension would loop in Python."""
    if not sensors:
        return lambda values: ()
    if len(sensors) == 1:
        only = sensors[0]
        return lambda values: (values[only],)
    getter: Callable[[dict[str, float]], tuple[float, ...]] = itemgetter(*sensors)
    return getter

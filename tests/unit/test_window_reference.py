"""The windower against its previous, plainer implementation, on random streams.

`MachineWindower` keeps its rows in a ring and takes in-order readings by a fast path (it
runs once per reading). The implementation it replaced, kept below verbatim as the oracle
(deque of rows, `np.stack` per window, bisect for every reading), must agree with it on
every reading's fate and every window, for streams with out-of-order, duplicate, late and
missing readings, gaps and strides.
"""

from __future__ import annotations

import bisect
import math
from collections import deque

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.types import FloatArray, Reading, Rejection, RejectReason, Row, Window
from service.stream.window import MachineWindower


class ReferenceWindower:
    """The implementation before the ring buffer (commit 5de57d4), unchanged."""

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
        self._held_ts = np.full(len(sensors), -math.inf)
        self._held_value = np.zeros(len(sensors), dtype=np.float32)
        self._rows: deque[FloatArray] = deque(maxlen=length)
        self._until_next_window = 0
        self._next_tick: float | None = None
        self.last_tick = -math.inf
        self.newest_ts = -math.inf
        self.gaps = 0

    def add(self, reading: Reading) -> Rejection | None:
        """Takes a reading onto the grid, or says why not."""
        i = self._index.get(reading.sensor)
        if i is None:
            return Rejection(RejectReason.UNKNOWN_SENSOR, reading.sensor, self.machine)
        pending = self._pending[i]
        if reading.ts == self._held_ts[i] or _contains_ts(pending, reading.ts):
            return Rejection(RejectReason.DUPLICATE, f"{reading.sensor}@{reading.ts}", self.machine)
        if reading.ts <= self.last_tick:
            behind = self.newest_ts - reading.ts
            return Rejection(
                RejectReason.LATE, f"{reading.sensor}: {behind:.1f} s behind", self.machine
            )
        bisect.insort(pending, (reading.ts, reading.value))
        self.newest_ts = max(self.newest_ts, reading.ts)
        return None

    def advance(self) -> list[Window]:
        """Emits the grid steps that no allowed late reading can change any more."""
        watermark = self.newest_ts - self.lateness
        if self._next_tick is None:
            first = min((p[0][0] for p in self._pending if p), default=math.inf)
            if not math.isfinite(first):
                return []
            self._next_tick = math.ceil(first / self.period) * self.period
        windows: list[Window] = []
        while self._next_tick <= watermark:
            tick = self._next_tick
            self._hold_until(tick)
            if np.all(tick - self._held_ts <= self.max_stale):
                window = self._append_row(tick)
                if window is not None:
                    windows.append(window)
                self._next_tick = tick + self.period
            else:
                self._restart()
                self._next_tick = self._next_possible_tick(tick, watermark)
            self.last_tick = tick
        return windows

    def _hold_until(self, tick: float) -> None:
        for i, pending in enumerate(self._pending):
            taken = bisect.bisect_right(pending, (tick, math.inf))
            if taken:
                self._held_ts[i], self._held_value[i] = pending[taken - 1]
                del pending[:taken]

    def _append_row(self, tick: float) -> Window | None:
        self._rows.append(self._held_value.copy())
        if len(self._rows) < self.length:
            return None
        if self._until_next_window > 0:
            self._until_next_window -= 1
            return None
        self._until_next_window = self.stride - 1
        values = np.stack(self._rows)
        return Window(self.machine, tick, self.sensors, values)

    def _restart(self) -> None:
        if self._rows:
            self.gaps += 1
        self._rows.clear()
        self._until_next_window = 0

    def _next_possible_tick(self, tick: float, watermark: float) -> float:
        """After a gap, the first grid step at which every stale sensor could have a value:
        skipping there keeps a clock jump of hours from costing a loop step per second."""
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


# A stream: (sensor, ts) readings, with `None` standing for a call of advance().
events = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 80).map(lambda t: t / 4)),
        st.none(),
    ),
    max_size=120,
)


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(
    events,
    st.integers(1, 4),
    st.integers(1, 3),
    st.sampled_from([0.5, 1.0]),
    st.sampled_from([0.0, 1.5, 3.0]),
    st.sampled_from([1.0, 2.5]),
)
def test_the_windower_agrees_with_the_reference(
    stream: list[tuple[str, float] | None],
    length: int,
    stride: int,
    period: float,
    lateness: float,
    max_stale: float,
) -> None:
    args = ("m", ("a", "b"), period, length, stride, max_stale, lateness)
    new, old = MachineWindower(*args), ReferenceWindower(*args)
    for k, event in enumerate([*stream, None]):
        if event is None:
            got, want = new.advance(), old.advance()
            assert [w.end_ts for w in got] == [w.end_ts for w in want]
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g.values, w.values)
                assert g.values.dtype == w.values.dtype
            continue
        sensor, ts = event
        reading = Reading("m", sensor, ts, float(k))
        a, b = new.add(reading), old.add(reading)
        assert (a and (a.reason, a.detail)) == (b and (b.reason, b.detail)), reading
        assert new.newest_ts == old.newest_ts
    assert new.gaps == old.gaps
    assert new.last_tick == old.last_tick


# A run of readings as one message brings them: (sensor, ts), in or out of order.
runs = st.lists(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 80).map(lambda t: t / 4)),
        max_size=12,
    ),
    max_size=12,
)


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(runs, st.integers(1, 4), st.sampled_from([0.0, 1.5, 3.0]))
def test_add_many_agrees_with_add_one_by_one(
    stream: list[list[tuple[str, float]]], length: int, lateness: float
) -> None:
    args = ("m", ("a", "b"), 1.0, length, 1, 2.5, lateness)
    many, one = MachineWindower(*args), MachineWindower(*args)
    for k, run in enumerate(stream):
        readings = [Reading("m", sensor, ts, float(k + i)) for i, (sensor, ts) in enumerate(run)]
        got = many.add_many(readings)
        want = [r for r in (one.add(reading) for reading in readings) if r is not None]
        assert got == want
        assert many.newest_ts == one.newest_ts
        windows, expected = many.advance(), one.advance()
        assert [w.end_ts for w in windows] == [w.end_ts for w in expected]
        for g, w in zip(windows, expected, strict=True):
            np.testing.assert_array_equal(g.values, w.values)
    assert many.gaps == one.gaps


# Records as a per-machine message brings them: a time and values of (mostly) every sensor,
# in any order, now and then with a sensor missing or of another name; or a reading alone.
row_keys = st.one_of(
    st.permutations(["a", "b"]),
    st.permutations(["a", "b"]),
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True),
)
# Times as quarter-second steps from the previous event's: mostly forward (the rows' fast
# path), sometimes back or repeated (out of order, duplicate, late).
steps = st.sampled_from([4, 4, 4, 2, 1, 0, -1, -3, -8, 40])
row_events = st.lists(
    st.one_of(
        st.tuples(row_keys, steps),
        st.tuples(row_keys, steps),
        st.tuples(row_keys, steps),
        st.tuples(st.sampled_from(["a", "b", "c"]), steps),
        st.none(),
        st.none(),
    ),
    min_size=4,
    max_size=60,
)


# Mostly whole rows in order, as batches bring them: several to a grid step, one, or a gap
# between; now and then a reading alone or one late. The steps' fast path (a run of steps
# taking one row each, `MachineWindower._advance_rows`) against the one-by-one loop.
def _batch_event(kind: str, step: int, swap: bool) -> tuple[list[str] | str, int] | None:
    if kind == "row":
        return (["b", "a"] if swap else ["a", "b"]), step
    if kind == "reading":
        return ("b" if swap else "a"), min(step, 4) - 4
    return None


# sampled_from picks evenly (one_of would not): rows 12 times as often as either other.
batch_events = st.lists(
    st.builds(
        _batch_event,
        st.sampled_from(["row"] * 12 + ["reading", "advance", "advance"]),
        st.sampled_from([4, 4, 4, 4, 1, 2, 4, 12]),
        st.booleans(),
    ),
    min_size=10,
    max_size=80,
)


@settings(max_examples=400, derandomize=True, database=None, deadline=None)
@given(
    st.one_of(
        st.lists(row_events, min_size=1, max_size=4),
        st.lists(batch_events, min_size=1, max_size=3),
    ),
    st.integers(1, 4),
    st.integers(1, 2),
    st.sampled_from([0.0, 1.5, 3.0]),
    st.sampled_from([1.0, 2.5, 0.5]),
)
def test_rows_agree_with_their_values_added_one_by_one(
    cycles: list[list[tuple[list[str] | str, int] | None]],
    length: int,
    stride: int,
    lateness: float,
    max_stale: float,
) -> None:
    """`add_rows` (rows queued whole, spilled when a reading comes one by one) against
    `add` of each of the rows' values in their order, on streams with rows out of order,
    duplicate, late, partial or with unknown sensors, readings in between, and gaps."""
    args = ("m", ("a", "b"), 1.0, length, stride, max_stale, lateness)
    new, old = MachineWindower(*args), MachineWindower(*args)
    k = clock = 0
    for cycle in [*cycles, [None]]:
        for event in cycle:
            if event is None:
                got, want = new.advance(), old.advance()
                assert [w.end_ts for w in got] == [w.end_ts for w in want]
                for g, w in zip(got, want, strict=True):
                    np.testing.assert_array_equal(g.values, w.values)
                continue
            keys, step = event
            clock = max(0, clock + step)
            ts = clock / 4
            k += 1
            if isinstance(keys, str):
                reading = Reading("m", keys, ts, float(k))
                a, b = new.add(reading), old.add(reading)
                assert a == b
            else:
                row = Row(ts, {key: float(k * 10 + i) for i, key in enumerate(keys)})
                got_rejections = new.add_rows([row])
                want_rejections = [r for r in map(old.add, row.readings("m")) if r is not None]
                assert got_rejections == want_rejections
            assert new.newest_ts == old.newest_ts
    assert new.gaps == old.gaps
    assert new.last_tick == old.last_tick


def test_rows_in_order_are_queued_whole_and_held_as_rows() -> None:
    """The path the tests above compare: in-order rows stay rows until a step takes them."""
    w = MachineWindower("m", ("a", "b"), 1.0, 2, 1, 1.5, lateness=0.0)
    rows = [Row(float(t), {"b": 10.0 * t, "a": float(t)}) for t in range(4)]
    assert w.add_rows(rows) == []
    assert len(w._pending_rows) == 4
    assert not any(w._pending)
    assert [(x.end_ts, x.values.tolist()) for x in w.advance()] == [
        (1.0, [[0.0, 0.0], [1.0, 10.0]]),
        (2.0, [[1.0, 10.0], [2.0, 20.0]]),
        (3.0, [[2.0, 20.0], [3.0, 30.0]]),
    ]


def test_a_row_passes_over_older_readings_still_pending() -> None:
    """A reading waits for its step while a newer row comes: the row's step holds the row
    for every sensor, and the older reading must not come back at the next step."""
    args = ("m", ("a", "b"), 1.0, 1, 1, 2.5, 0.0)
    new, old = MachineWindower(*args), MachineWindower(*args)
    events: list[Row | Reading] = [
        Row(5.0, {"a": 1.0, "b": 2.0}),
        Reading("m", "a", 5.5, 3.0),
        Row(6.0, {"a": 4.0, "b": 5.0}),
        Reading("m", "b", 7.0, 6.0),
    ]
    for event in events:
        if isinstance(event, Row):
            assert new.add_rows([event]) == []
            for reading in event.readings("m"):
                assert old.add(reading) is None
        else:
            assert new.add(event) is None
            assert old.add(event) is None
        got, want = new.advance(), old.advance()
        assert [(w.end_ts, w.values.tolist()) for w in got] == [
            (w.end_ts, w.values.tolist()) for w in want
        ]
    assert [w.values.tolist() for w in new.advance()] == []

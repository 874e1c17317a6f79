"""`Intake`: the queue between paho's network thread and the pipeline, bounded in messages
and in readings, and taken from a cycle at a time, bounded in both too.

Memory follows readings, not messages: a queued per-machine batch holds about 70 bytes a
reading (its rows' dicts and floats), a per-sensor message about 370 bytes for its one
reading (measured with tracemalloc). A bound in messages alone let 1,675 batches of 450
records take 3 GiB, most of it in the windows of cycles of thousands of such messages: a
cycle is bounded in readings too (`pipeline.max_batch_readings`), which bounds the windows
it cuts and scores (benchmarks/overload.py: the peak of a flood of such batches was 907 MiB
with cycles of 100,000 readings, 584 MiB with 20,000).

One thread puts (paho's), one takes (the pipeline's): each counts the readings it moved in
a counter only it writes, so that the count queued needs no lock.
"""

from __future__ import annotations

import queue
from operator import attrgetter

from service.stream.arrivals import Batch

_VALUES = attrgetter("values")


def readings_of(batch: Batch) -> int:
    """The values a batch holds: its readings and every value of its rows."""
    return len(batch.readings) + sum(map(len, map(_VALUES, batch.rows)))


class Intake:
    def __init__(
        self, max_messages: int, max_readings: int, cycle_messages: int, cycle_readings: int
    ) -> None:
        self.max_messages = max_messages
        self.max_readings = max_readings
        self.cycle_messages = cycle_messages
        self.cycle_readings = cycle_readings
        # SimpleQueue (C) costs a fraction of Queue per message; `put` keeps the bounds.
        self._queue: queue.SimpleQueue[tuple[Batch, int]] = queue.SimpleQueue()
        self._put = 0  # readings put, written by the putting thread only
        self._taken = 0  # readings taken, written by the taking thread only
        self.full = ""  # what the last refused message found full: messages or readings

    @property
    def readings(self) -> int:
        """Readings waiting (the taker's count may lag the putter's, never lead it)."""
        return self._put - self._taken

    @property
    def readings_put(self) -> int:
        """Readings queued since the start (read on the putting thread, exact there)."""
        return self._put

    @property
    def taken(self) -> int:
        """Readings taken by the pipeline since the start."""
        return self._taken

    @property
    def fill(self) -> float:
        """How full the queue is: the larger share of its bounds, messages or readings."""
        return max(self._queue.qsize() / self.max_messages, self.readings / self.max_readings)

    def qsize(self) -> int:
        return self._queue.qsize()

    def empty(self) -> bool:
        return self._queue.empty()

    def put(self, batch: Batch) -> bool:
        """Queues the batch; False when it would pass a bound (the caller counts it
        overloaded). A batch larger than the whole budget is taken into an empty queue."""
        if self._queue.qsize() >= self.max_messages:
            self.full = "messages"
            return False
        count = readings_of(batch)
        waiting = self._put - self._taken
        if waiting and waiting + count > self.max_readings:
            self.full = "readings"
            return False
        self._put += count
        self._queue.put((batch, count))
        return True

    def take(self, timeout: float) -> list[Batch]:
        """A cycle's batches: the first waits up to `timeout` seconds, then what is queued,
        up to `cycle_messages` messages and, past the first, `cycle_readings` readings."""
        try:
            batch, count = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        batches = [batch]
        taken = count
        get = self._queue.get_nowait
        try:
            while len(batches) < self.cycle_messages and taken < self.cycle_readings:
                batch, count = get()
                batches.append(batch)
                taken += count
        except queue.Empty:
            pass
        self._taken += taken
        return batches

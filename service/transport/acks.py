"""`AckOrder`: PUBACKs sent once messages are processed, in the order the messages came."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

# A message's acknowledgement: called exactly once, when the message is processed.
Ack = Callable[[], None]


class AckOrder:
    """Sends PUBACKs once messages are processed, in the order the messages came.

    MQTT 5 (4.6) wants PUBACKs in the order of the PUBLISHes, while a message with readings
    is done only when the pipeline has taken them in, and one without is done at once. A
    message is acknowledged when it and every message before it are done, so an unprocessed
    reading is never acknowledged: after a crash the broker (persistent session) delivers
    it again. A new connection starts a new queue: the broker re-sends what was not
    acknowledged, so acks of the old connection are dropped.

    Only paho's thread tracks (and resets, on connect), so tracking needs no lock: a deque
    appends atomically. Acks come from either thread and take the lock, so that two threads
    cannot reorder PUBACKs. Each message is `[mid, qos, done]`, a list: a message costs
    this on paho's thread, where every microsecond counts at tens of thousands a second.
    """

    def __init__(self, send: Callable[[int, int], object]) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._pending: deque[list[int]] = deque()  # [mid, qos, done], in arrival order

    def reset(self) -> None:
        with self._lock:
            self._pending = deque()

    def track(self, mid: int, qos: int) -> Ack:
        """An acknowledgement to call once the message is processed."""
        if qos == 0:
            return _nothing
        entry = [mid, qos, 0]
        pending = self._pending
        pending.append(entry)
        return lambda: self._done(entry, pending)

    def _done(self, entry: list[int], pending: deque[list[int]]) -> None:
        with self._lock:
            entry[2] = 1
            if pending is not self._pending:
                return  # of a connection before the current one
            while pending and pending[0][2]:
                mid, qos, _ = pending.popleft()
                # Sent under the lock so that two threads cannot reorder them; paho queues.
                self._send(mid, qos)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)


def _nothing() -> None:
    return None

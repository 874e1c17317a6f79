"""Worker threads that cannot die quietly, and stop in one shape.

An exception in a worker is logged with its traceback and counted, and the worker is then
marked failed, which turns `/healthz` red so systemd's watchdog or Kubernetes restarts the
process, instead of leaving a daemon that looks alive and no longer scores. `Lull` tells
other threads when a busy one waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import structlog

from service.core.metrics import Metrics

log = structlog.get_logger(__name__)


class InjectedFaultError(RuntimeError):
    """Raised by an armed test fault (service.faults); never by normal operation. The MQTT
    client lets it escape paho's callback, as an unexpected error once did."""


class Worker(threading.Thread):
    def __init__(self, name: str, metrics: Metrics) -> None:
        super().__init__(name=name, daemon=True)
        self.metrics = metrics
        self.failed = threading.Event()

    def work(self) -> None:
        raise NotImplementedError

    def stop(self, deadline: float) -> None:
        """Asks the thread to end by `deadline` (`time.monotonic()`); `join_until` waits."""
        raise NotImplementedError

    def join_until(self, deadline: float) -> bool:
        """Waits for the thread until `deadline`; True when it has ended."""
        if self.ident is not None:
            self.join(max(0.0, deadline - time.monotonic()))
        return not self.is_alive()

    def run(self) -> None:
        try:
            self.work()
        except BaseException:
            self.failed.set()
            self.metrics.thread_failures.labels(thread=self.name).inc()
            log.exception("thread_failed", thread=self.name)
            raise

    @property
    def healthy(self) -> bool:
        return self.is_alive() and not self.failed.is_set()


class Lull:
    """When a busy thread lets another run its Python: while it waits (for input, or out
    the rest of its minimum cycle), and for one turn at the end of each of its cycles,
    during which it waits itself. Two threads running Python at once take turns on the
    GIL, and each of the busy thread's calls that gives it up (every torch operation, every
    lock) waits up to the switch interval to win it back: beside a /metrics render the
    pipeline's cycles ran 10 - 100 times slower (benchmarks/latency.py). A busy thread that
    never waits (a loaded pipeline, fine-tunes beside it) still hands over a turn a cycle.

    The other thread calls `wait(timeout)` before each piece of its work and `done()`
    after the last."""

    def __init__(self, turn_limit: float = 0.02) -> None:
        # The longest the busy thread waits for a turn to end, handed over or not.
        self.turn_limit = turn_limit
        self._state = threading.Condition()
        self._waiting = True  # a thread not started yet, or ended, takes no turns
        self._asked = False  # the other thread wants a turn
        self._granted = False  # a turn handed over, not begun yet
        self._in_turn = False  # the other thread's turn runs

    def running(self) -> AbstractContextManager[None]:
        """Around the busy thread's whole run: turns wait for its waits until it ends."""
        return self._while(waiting=False)

    def waiting(self) -> AbstractContextManager[None]:
        """Around the busy thread's waits."""
        return self._while(waiting=True)

    def hand_over(self) -> None:
        """On the busy thread, between its cycles: lets a turn that is asked for run, and
        waits until it is over, `turn_limit` seconds at most."""
        with self._state:
            if not self._asked:
                return
            self._asked, self._granted = False, True
            self._state.notify_all()
            self._state.wait_for(lambda: not (self._granted or self._in_turn), self.turn_limit)
            self._granted = False

    def wait(self, timeout: float) -> bool:
        """On the other thread: ends its turn, then waits for the next one (the busy thread
        waits, or hands one over), `timeout` seconds at most; False on the timeout."""
        with self._state:
            self._end_turn()
            self._asked = True
            began = self._state.wait_for(lambda: self._waiting or self._granted, timeout)
            self._asked = self._granted = False
            self._in_turn = began
            return began

    def done(self) -> None:
        """On the other thread: its work is over."""
        with self._state:
            self._end_turn()

    def _end_turn(self) -> None:
        if self._in_turn:
            self._in_turn = False
            self._state.notify_all()

    @contextmanager
    def _while(self, waiting: bool) -> Iterator[None]:
        self._mark(waiting)
        try:
            yield
        finally:
            self._mark(not waiting)

    def _mark(self, waiting: bool) -> None:
        with self._state:
            self._waiting = waiting
            if waiting:
                self._state.notify_all()
            else:  # a turn begun while it waited ends first
                self._state.wait_for(lambda: not self._in_turn, self.turn_limit)

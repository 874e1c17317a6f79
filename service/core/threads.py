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
from typing import Protocol

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


class Turns(Protocol):
    """`Lull`, as a thread that takes turns beside the busy one sees it."""

    def wait(self, timeout: float, background: bool = False) -> object: ...

    def done(self) -> None: ...


class Unpaced:
    """No one to take turns with: every turn goes on at once."""

    def wait(self, timeout: float, background: bool = False) -> object:
        return True

    def done(self) -> None:
        pass


class Lull:
    """When a busy thread lets others run their Python: while it waits (for input, or out
    the rest of its minimum cycle), and for a turn at the end of its cycles, during which
    it waits itself, as long as the turns it hands over stay within `share` of its time.
    Two threads running Python at once take turns on the GIL, and each of the busy
    thread's calls that gives it up (every torch operation, every lock) waits up to the
    switch interval to win it back: beside a /metrics render the
    pipeline's cycles ran 10 - 100 times slower (benchmarks/latency.py), and beside the
    fine-tuner's training steps 3 - 5 times. A busy thread that never waits (a loaded
    pipeline) still hands turns over.

    Each other thread calls `wait(timeout)` before each piece of its work and `done()`
    after the last; several may take turns at once (concurrent scrapes, the fine-tuner).
    A `background` thread (the fine-tuner) first waits out the others' work, begun with
    their first `wait` and ended with `done()`: a scrape's turns shared with training left
    each turn too short for either, and the pipeline ran beside both."""

    def __init__(self, turn_limit: float = 0.02, share: float = 0.2) -> None:
        # The longest the busy thread waits for the turns to end, handed over or not.
        self.turn_limit = turn_limit
        # The most of the busy thread's time it hands over. Handing a turn over every cycle
        # to a fine-tuner that always asks took a third of the pipeline's time at 1,000
        # machines, and its cycles took in so many readings that alerts waited 200 ms.
        self.share = share
        self._credit = 0.0  # seconds of turns the busy thread may hand over now
        self._credited_at = time.monotonic()
        self._state = threading.Condition()
        self._waiting = True  # a thread not started yet, or ended, takes no turns
        self._asking = 0  # other threads waiting for a turn
        self._grants = 0  # turns handed over so far: a thread asking sees it change
        self._unbegun = 0  # threads a hand-over granted a turn that has not begun yet
        self._in_turn: set[int] = set()  # the threads whose turn runs
        self._foreground: set[int] = set()  # the threads that are not background, at work

    def running(self) -> AbstractContextManager[None]:
        """Around the busy thread's whole run: turns wait for its waits until it ends."""
        return self._while(waiting=False)

    def waiting(self) -> AbstractContextManager[None]:
        """Around the busy thread's waits."""
        return self._while(waiting=True)

    def hand_over(self) -> None:
        """On the busy thread, between its cycles: lets the turns asked for run, and waits
        until they are over, `turn_limit` seconds at most; not while the turns it handed
        over came to more than `share` of its time."""
        with self._state:
            now = time.monotonic()
            limit = self.turn_limit
            self._credit = min(limit, self._credit + self.share * (now - self._credited_at))
            self._credited_at = now
            if not self._asking or self._credit <= 0:
                return
            self._grants += 1
            self._unbegun = self._asking
            self._state.notify_all()
            # A thread that ends its turn and asks for the next one waits for the next
            # hand-over: this one waits only for the turns it granted.
            self._state.wait_for(lambda: not (self._unbegun or self._in_turn), limit)
            self._unbegun = 0
            ended = time.monotonic()
            self._credit -= (1 - self.share) * (ended - now)
            self._credited_at = ended

    def wait(self, timeout: float, background: bool = False) -> bool:
        """On another thread: ends its turn, then waits for its next one (the busy thread
        waits, or hands one over), `timeout` seconds at most; False on the timeout. In the
        `background`, the other threads' work ends first, within the same timeout."""
        with self._state:
            self._end_turn()
            if background:
                started = time.monotonic()
                self._state.wait_for(lambda: not self._foreground, timeout)
                timeout = max(0.0, timeout - (time.monotonic() - started))
            else:
                self._foreground.add(threading.get_ident())
            self._asking += 1
            asked_at = self._grants
            began = self._state.wait_for(lambda: self._waiting or self._grants != asked_at, timeout)
            self._asking -= 1
            if self._grants != asked_at and self._unbegun:
                self._unbegun -= 1
            if began:
                self._in_turn.add(threading.get_ident())
            return began

    def done(self) -> None:
        """On another thread: its work is over."""
        with self._state:
            self._end_turn()
            me = threading.get_ident()
            if me in self._foreground:
                self._foreground.discard(me)
                self._state.notify_all()

    def _end_turn(self) -> None:
        me = threading.get_ident()
        if me in self._in_turn:
            self._in_turn.discard(me)
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
            else:  # turns begun while it waited end first
                self._state.wait_for(lambda: not self._in_turn, self.turn_limit)

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
    """When a busy thread waits (for input, or out the rest of its minimum cycle), for a
    thread whose Python work can wait to do it then. Two threads running Python take turns
    on the GIL, and each of the busy thread's calls that gives it up (every torch
    operation, every lock) waits up to the switch interval to win it back: beside a
    /metrics render the pipeline's cycles ran 10 - 100 times slower (benchmarks/latency.py)."""

    def __init__(self) -> None:
        self._waiting = threading.Event()
        self._waiting.set()  # a thread not started yet, or ended, takes no turns

    def running(self) -> AbstractContextManager[None]:
        """Around the busy thread's whole run: turns wait for its waits until it ends."""
        return self._while(waiting=False)

    def waiting(self) -> AbstractContextManager[None]:
        """Around the busy thread's waits."""
        return self._while(waiting=True)

    @contextmanager
    def _while(self, waiting: bool) -> Iterator[None]:
        self._mark(waiting)
        try:
            yield
        finally:
            self._mark(not waiting)

    def _mark(self, waiting: bool) -> None:
        if waiting:
            self._waiting.set()
        else:
            self._waiting.clear()

    def wait(self, timeout: float) -> bool:
        """Until the busy thread waits, or `timeout` seconds; False on the timeout."""
        return self._waiting.wait(timeout)

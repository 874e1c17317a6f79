"""Worker threads that cannot die quietly, and stop in one shape.

An exception in a worker is logged with its traceback and counted, and the worker is then
marked failed, which turns `/healthz` red so systemd's watchdog or Kubernetes restarts the
process, instead of leaving a daemon that looks alive and no longer scores.
"""

from __future__ import annotations

import threading
import time

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

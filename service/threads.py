"""Worker threads that cannot die quietly.

An exception in a worker is logged with its traceback and counted, and the worker is then
marked failed, which turns `/healthz` red so systemd's watchdog or Kubernetes restarts the
process, instead of leaving a daemon that looks alive and no longer scores.
"""

from __future__ import annotations

import threading

import structlog

from service.metrics import Metrics

log = structlog.get_logger(__name__)


class Worker(threading.Thread):
    def __init__(self, name: str, metrics: Metrics) -> None:
        super().__init__(name=name, daemon=True)
        self.metrics = metrics
        self.failed = threading.Event()

    def work(self) -> None:
        raise NotImplementedError

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

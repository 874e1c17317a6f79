"""Worker threads that cannot die quietly.

An exception in a worker is logged with its traceback and counted, and the worker is then
marked failed, which turns `/healthz` red so systemd's watchdog or Kubernetes restarts the
process, instead of leaving a daemon that looks alive and no longer scores.
"""

from __future__ import annotations

import os
import threading

import structlog

from service.core.metrics import Metrics

log = structlog.get_logger(__name__)

# Test-only fault injection, read once at start from the environment (never from MQTT or
# HTTP, so nothing on the network can trigger it): a comma-separated list of `pipeline`
# (the pipeline thread raises on its first batch), `mqtt` (an exception escapes a paho
# callback, which kills paho's network thread) and `stall` (the pipeline takes nothing from
# its queue, so received readings stay unprocessed and unacknowledged).
FAULT_ENV = "AEMON_TEST_FAULT"


class InjectedFaultError(RuntimeError):
    """Raised by the test-only fault hook; never by normal operation."""


def armed_faults() -> frozenset[str]:
    faults = frozenset(f for f in os.environ.get(FAULT_ENV, "").split(",") if f.strip())
    if faults:
        log.warning("test_fault_armed", faults=sorted(faults))
    return faults


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

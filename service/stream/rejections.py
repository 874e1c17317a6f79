"""Counting and logging rejected readings, from any stage.

Every rejection is counted. Logging is limited to one line per machine and reason every
`interval` seconds, carrying how many were suppressed, so a flood of bad input cannot
flood the journal too.
"""

from __future__ import annotations

import threading
import time

import structlog

from service.core.metrics import Metrics
from service.core.types import Rejection

log = structlog.get_logger(__name__)


class RejectionLog:
    def __init__(self, metrics: Metrics, interval: float = 10.0) -> None:
        self.metrics = metrics
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def record(self, rejection: Rejection, machine_label: str, topic: str | None = None) -> None:
        reason = rejection.reason.value
        self.metrics.readings_rejected.labels(machine=machine_label, reason=reason).inc(
            rejection.count
        )
        key = (machine_label, reason)
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.interval) < self.interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + rejection.count
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        log.warning(
            "reading_rejected",
            machine=rejection.machine,
            reason=reason,
            detail=rejection.detail,
            topic=topic,
            suppressed_since_last=suppressed,
        )

"""`Admission`: whether a machine heard of for the first time is taken in, up to
`ingest.max_machines`, with the first refusal since there was room logged and counted."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from service.core.config import Settings
from service.core.metrics import Metrics
from service.core.types import Rejection, RejectReason

log = structlog.get_logger(__name__)


class Admission:
    def __init__(
        self, settings: Settings, metrics: Metrics, reject: Callable[[Rejection], None]
    ) -> None:
        self.limit = settings.ingest.max_machines
        self.declared = settings.machines
        self.metrics = metrics
        self.reject = reject
        self.at_limit = False  # a new machine was refused, none forgotten since

    def admits(self, machines: int) -> bool:
        return machines < self.limit

    def sensors_of(self, machine: str) -> tuple[tuple[str, ...] | None, float | None]:
        """The declared sensors and period of a machine, (None, None) when undeclared."""
        declared = self.declared.get(machine)
        return (None, None) if declared is None else (declared.sensors, declared.period)

    def refuse(self, machine: str, count: int) -> None:
        """A new machine past the limit: its readings are rejected as unknown_topic."""
        reason = f"machine limit {self.limit}"
        self.reject(Rejection(RejectReason.UNKNOWN_TOPIC, reason, machine, count))
        if not self.at_limit:
            self.at_limit = True
            self.metrics.machine_limit_reached.inc()
            log.warning(
                "machine_limit_reached",
                limit=self.limit,
                refused=machine,
                hint="new machines are rejected as unknown_topic until one is forgotten or "
                "ingest.max_machines is raised",
            )

    def room_made(self) -> None:
        self.at_limit = False

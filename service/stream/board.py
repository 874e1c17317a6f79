"""`Board`: the machines as `/api/machines` shows them, and their state gauges, refreshed
by the pipeline for the machines a cycle changed and read by the HTTP thread."""

from __future__ import annotations

import threading

from service.core.metrics import Metrics
from service.core.types import MachineRecord
from service.stream.machines import MachineRuntime


class Board:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._records: dict[str, MachineRecord] = {}
        self._lock = threading.Lock()

    def refresh(self, changed: dict[str, MachineRuntime]) -> None:
        """Describes `changed` again and updates their gauges (the pipeline thread)."""
        described = {}
        for name, runtime in changed.items():
            described[name] = runtime.describe()
            state = runtime.shown_state
            if runtime.published_state != state:
                self.metrics.set_machine_state(name, state)
                runtime.published_state = state
            if runtime.newest_ts is not None:
                self.metrics.last_reading_of[name].set(runtime.newest_ts)
        with self._lock:
            self._records.update(described)

    def remove(self, name: str) -> None:
        with self._lock:
            self._records.pop(name, None)

    def records(self) -> list[MachineRecord]:
        with self._lock:
            return list(self._records.values())

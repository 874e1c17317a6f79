"""`Board`: the machines as `/api/machines` shows them, and their state gauges, refreshed
by the pipeline for the machines a cycle changed and read by the HTTP thread."""

from __future__ import annotations

import threading

from service.core.metrics import Metrics
from service.core.types import MachineRecord
from service.stream.history import MachineHistory
from service.stream.machines import MachineRuntime


class Board:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._records: dict[str, MachineRecord] = {}
        self._histories: dict[str, MachineHistory] = {}
        self._lock = threading.Lock()

    def refresh(self, changed: dict[str, MachineRuntime]) -> None:
        """Describes `changed` again and updates their gauges (the pipeline thread)."""
        described = {}
        histories = {}
        for name, runtime in changed.items():
            described[name] = runtime.describe()
            histories[name] = runtime.history
            state = runtime.shown_state
            if runtime.published_state != state:
                self.metrics.set_machine_state(name, state)
                runtime.published_state = state
            if runtime.newest_ts is not None:
                self.metrics.last_reading_of[name].set(runtime.newest_ts)
        with self._lock:
            self._records.update(described)
            self._histories.update(histories)

    def remove(self, name: str) -> None:
        with self._lock:
            self._records.pop(name, None)
            self._histories.pop(name, None)

    def records(self) -> list[MachineRecord]:
        with self._lock:
            return list(self._records.values())

    def record(self, name: str) -> tuple[MachineRecord, MachineHistory] | None:
        """One machine's record and history (the HTTP threads); None if unknown."""
        with self._lock:
            if name not in self._records:
                return None
            return self._records[name], self._histories[name]

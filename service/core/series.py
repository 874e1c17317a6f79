"""Labelled counters and gauges whose series cost a value, not a metric object.

prometheus_client makes each labelled series a full copy of its metric (name, labels,
documentation, a value object with a lock of its own): about 650 bytes a series. A plant
has about 27 series a machine, so at 1,000 machines 17 MiB went to them. Here a series is
a `Cell` (its value, and its family's lock), about 160 bytes with its key; the family,
its text and `remove` are prometheus_client's own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Gauge
from prometheus_client.samples import Sample


class Cell:
    """One series' value (a gauge's). Its family's lock guards each change: the pipeline,
    the fine-tuner and paho's thread may count into one family at once."""

    __slots__ = ("_lock", "value")
    SUFFIX = ""  # of the sample's name

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self.value += amount

    def set(self, value: float) -> None:
        self.value = float(value)

    def get(self) -> float:
        return self.value

    def _samples(self) -> Iterable[Sample]:
        return (Sample(self.SUFFIX, {}, self.value, None, None),)


class CounterCell(Cell):
    """A counter's series."""

    __slots__ = ()
    SUFFIX = "_total"


def _cell(
    metric: Counter | Gauge,
    kind: type[Cell],
    labelvalues: tuple[Any, ...],
    labelkwargs: dict[str, Any],
) -> Cell:
    """The series of those label values, made at 0 on first use (as `labels()` does)."""
    names = metric._labelnames
    if labelkwargs:
        if labelvalues or sorted(labelkwargs) != sorted(names):
            raise ValueError("Incorrect label names")
        key = tuple(str(labelkwargs[name]) for name in names)
    else:
        if len(labelvalues) != len(names):
            raise ValueError("Incorrect label count")
        key = tuple(str(value) for value in labelvalues)
    cells: dict[Any, Any] = metric._metrics
    cell = cells.get(key)
    if cell is None:
        with metric._lock:
            cell = cells.setdefault(key, kind(metric._lock))
    assert isinstance(cell, Cell)
    return cell


class MachineCounter(Counter):
    """A labelled `Counter` whose series are `Cell`s."""

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Cell:  # type: ignore[override]
        return _cell(self, CounterCell, labelvalues, labelkwargs)


class MachineGauge(Gauge):
    """A labelled `Gauge` whose series are `Cell`s."""

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Cell:  # type: ignore[override]
        return _cell(self, Cell, labelvalues, labelkwargs)

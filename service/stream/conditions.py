"""`Conditions`: what keeps a machine from being scored as a running machine.

- maintenance: an operator's window (`maintenance` command, until a time) or a recurring
  one of the config (`[[maintenance]]`); no alert is raised and nothing is learnt in it.
- off: the machine is switched off or idle, by its `running` rule or, without one, because
  every sensor rests (moves less than `off.flat_fraction` of its learned spread); its
  windows are neither scored nor learnt, and a firing alert waits for it to run again.
- stale: no reading accepted for `alert.stale_after` seconds of wall-clock time, unless
  its source said it went away (a Sparkplug death: shown `off` until its next reading).

>>> from service.core.config import Settings
>>> rule = {"sensor": "current", "above": 0.5}
>>> s = Settings.model_validate({"machines": {"p": {"sensors": ["current"], "running": rule}}})
>>> c = Conditions("p", s, s.machines["p"])
>>> windows = np.array([[[1.0], [0.2]], [[0.7], [0.9]]], np.float32)
>>> c.off_windows(windows, ("current",), None).tolist()
[True, False]
"""

from __future__ import annotations

import functools
import math
import time
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase

import numpy as np
import numpy.typing as npt

from service.core.config import MachineSettings, MaintenanceWindow, Settings
from service.core.types import FloatArray, MachineState

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]
# How a machine ran while it learned: each sensor's level and spread (its model's scaler).
Running = tuple[FloatArray, FloatArray]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Steps at a window's edge over which every sensor must rest for the machine to be off:
# two alike readings of every sensor may be chance, three in a row are a machine at rest.
REST_STEPS = 3
# Spreads from its running level beyond which a resting sensor shows a machine that stopped.
AWAY = 3.0


class Conditions:
    def __init__(self, name: str, settings: Settings, machine: MachineSettings | None) -> None:
        self.rule = machine.running if machine is not None else None
        self.auto_off = settings.off.auto
        self.flat_fraction = settings.off.flat_fraction
        self.schedule = [w for w in settings.maintenance if matches(name, w.machines)]
        self._commanded: tuple[float, str] | None = None  # (until, reason)
        self._ended_scheduled_at = -math.inf  # a scheduled window ended early by command
        self.maintenance_until: float | None = None
        self.maintenance_reason: str | None = None
        self.off = False
        self.offline = False  # its source said it is gone (a Sparkplug death)
        self.stale = False
        self.last_seen = time.time()  # wall-clock of the newest accepted reading (or start)

    @property
    def shown(self) -> MachineState | None:
        if self.maintenance_until is not None:
            return MachineState.MAINTENANCE
        if self.stale:
            return MachineState.STALE
        if self.off or self.offline:
            return MachineState.OFF
        return None

    # -- maintenance ------------------------------------------------------------------------
    def begin_maintenance(self, until: float, reason: str) -> None:
        self._commanded = (until, reason)

    def end_maintenance(self, now: float) -> None:
        """Ends the commanded window and the scheduled one under way."""
        self._commanded = None
        if self.maintenance_until is not None:
            self._ended_scheduled_at = now

    def update_maintenance(self, now: float) -> bool | None:
        """Whether `now` (wall-clock) is in maintenance; True when it just began, False
        when it just ended, None when nothing changed."""
        window = self._current(now)
        before = self.maintenance_until is not None
        self.maintenance_until, self.maintenance_reason = window or (None, None)
        after = window is not None
        return after if after != before else None

    def _current(self, now: float) -> tuple[float, str] | None:
        if self._commanded is not None:
            if now < self._commanded[0]:
                return self._commanded
            self._commanded = None
        for window in self.schedule:
            span = scheduled_span(window, now)
            if span is not None and span[0] > self._ended_scheduled_at:
                return span[1], window.reason
        return None

    # -- off --------------------------------------------------------------------------------
    def may_be_off(self, running: Running | None) -> bool:
        """Whether any window can be off: with a rule, or against the learned operation."""
        return self.rule is not None or (self.auto_off and running is not None)

    def off_windows(
        self, values: FloatArray, sensors: tuple[str, ...], running: Running | None
    ) -> BoolArray:
        """Which windows `[n, time, sensors]` are not of a machine running throughout: by
        the rule, any step outside it. Without one, against how it ran while learning
        (`running`: its sensors' level and spread; none before a model exists, so learning
        trusts the rule alone): every sensor at rest (moving less than `flat_fraction` of
        its spread) over the window's first or last `REST_STEPS` steps, with at least one
        of them away from its running level there (`AWAY` spreads: a stopped machine's
        current or speed). Held values of a running machine, or a frozen feed, are at its
        level: they are scored. So the windows of a stop or a start, whose transient is no
        fault, are skipped with the machine's rest, but for the few whose edge has not
        rested that long: fewer than `alert.k` at the default."""
        none = np.zeros(len(values), dtype=bool)
        if self.rule is not None:
            if self.rule.sensor not in sensors:
                return none
            column = values[:, :, sensors.index(self.rule.sensor)]
            within = np.ones(column.shape, dtype=bool)
            if self.rule.above is not None:
                within &= column > self.rule.above
            if self.rule.below is not None:
                within &= column < self.rule.below
            return np.logical_not(within.all(axis=1))
        if not self.auto_off or running is None:
            return none
        index = _ends_index(values.shape[1])
        ends = values[:, index].reshape(len(values), 2, len(index) // 2, -1)
        rests = self._rests(ends, running)
        off: BoolArray = rests[:, 0] | rests[:, 1]  # either end
        return off

    def _rests(self, ends: FloatArray, running: Running) -> BoolArray:
        """Per window and end `[n, 2, steps, sensors]`: every sensor still, one away from
        its level. Only still ends are looked at further: a running machine's rarely are,
        and this runs for every machine's windows of every cycle."""
        level, spread = running
        moved = ends.max(axis=2) - ends.min(axis=2)
        rests: BoolArray = (moved < self.flat_fraction * spread).all(axis=2)
        if rests.any():
            away = (np.abs(ends.mean(axis=2) - level) > AWAY * spread).any(axis=2)
            rests &= away
        return rests


@functools.cache
def _ends_index(length: int) -> IntArray:
    """The steps of a window's first and last `REST_STEPS`, in one index."""
    steps = min(REST_STEPS, length)
    index: IntArray = np.r_[0:steps, length - steps : length]
    return index


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def scheduled_span(window: MaintenanceWindow, now: float) -> tuple[float, float] | None:
    """(start, end) of the occurrence of `window` under way at `now`, if any.

    >>> w = MaintenanceWindow(weekdays=("sat",), start="22:00", hours=4)
    >>> sat_23h = datetime(2026, 12, 5, 23, tzinfo=UTC).timestamp()
    >>> sun_01h, sun_03h = sat_23h + 2 * 3600, sat_23h + 4 * 3600
    >>> scheduled_span(w, sat_23h) == scheduled_span(w, sun_01h) != None
    True
    >>> scheduled_span(w, sun_03h) is None
    True
    """
    at = datetime.fromtimestamp(now, UTC)
    hour, minute = (int(x) for x in window.start.split(":"))
    for days_back in range(math.ceil(window.hours / 24) + 1):
        day = at - timedelta(days=days_back)
        if WEEKDAYS[day.weekday()] not in window.weekdays:
            continue
        start = day.replace(hour=hour, minute=minute, second=0, microsecond=0).timestamp()
        end = start + window.hours * 3600
        if start <= now < end:
            return start, end
    return None

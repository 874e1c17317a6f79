"""Operating schedules: the set-points, idles and stops a machine goes through.

A machine repeats one cycle of segments, drawn once from its own generator, with each
segment's length jittered by up to ±10 % per repetition. Repeating is the point: a detector
that has seen a few cycles has seen every normal operating point and every transition.

>>> import numpy as np
>>> s = Schedule((0.7, 1.0), 0.3, (60.0, 60.0), idle=False, stops=False,
...              rng=np.random.default_rng(0))
>>> [s.target(t)[1] for t in (0.0, 30.0)] == [s.cycle[0].speed] * 2
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulators.model import OpMode


@dataclass(frozen=True, slots=True)
class Segment:
    mode: OpMode
    speed: float  # the set-point, a fraction of rated speed (0 when stopped)
    dwell_s: float


def build_cycle(
    setpoints: tuple[float, ...],
    idle_speed: float,
    dwell_s: tuple[float, float],
    *,
    idle: bool,
    stops: bool,
    rng: np.random.Generator,
) -> list[Segment]:
    """Every set-point once (in a random order, then one more), an idle and a shorter stop
    at random places after the first segment."""
    lo, hi = dwell_s
    order = [float(setpoints[i]) for i in rng.permutation(len(setpoints))]
    order.append(float(setpoints[int(rng.integers(len(setpoints)))]))
    cycle = [Segment(OpMode.RUN, s, float(rng.uniform(lo, hi))) for s in order]
    extras = []
    if idle:
        extras.append(Segment(OpMode.IDLE, idle_speed, float(rng.uniform(lo, hi)) / 2))
    if stops:
        extras.append(Segment(OpMode.STOP, 0.0, float(rng.uniform(lo, hi)) / 2))
    for seg in extras:
        cycle.insert(int(rng.integers(1, len(cycle) + 1)), seg)
    return cycle


class Schedule:
    """The target (mode, speed) at time `t`; `t` must not go backwards between calls."""

    def __init__(
        self,
        setpoints: tuple[float, ...],
        idle_speed: float,
        dwell_s: tuple[float, float],
        *,
        idle: bool,
        stops: bool,
        rng: np.random.Generator,
        steady: bool = False,
    ) -> None:
        if steady:
            self.cycle = [Segment(OpMode.RUN, max(setpoints), float("inf"))]
        else:
            self.cycle = build_cycle(
                setpoints, idle_speed, dwell_s, idle=idle, stops=stops, rng=rng
            )
        self.rng = rng
        self.index = 0
        self.end = self.cycle[0].dwell_s

    def target(self, t: float) -> tuple[OpMode, float]:
        while t >= self.end:
            self.index = (self.index + 1) % len(self.cycle)
            jitter = float(self.rng.uniform(0.9, 1.1))
            self.end += self.cycle[self.index].dwell_s * jitter
        seg = self.cycle[self.index]
        return seg.mode, seg.speed

    @property
    def first(self) -> Segment:
        return self.cycle[0]

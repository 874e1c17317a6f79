"""Detection metrics as SKAB computes them: point-wise counts and its NAB changepoint score.

Point-wise, pooled over files, no point adjustment. SKAB's F1 is TP / (TP + (FN + FP) / 2):

>>> c = Confusion.of([1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 0, 0])
>>> c, round(c.f1, 4), round(c.far, 4), round(c.mar, 4)
(Confusion(tp=2, fp=1, tn=2, fn=1), 0.6667, 0.3333, 0.3333)

Changepoint score: a window of `width` seconds to the right of each labelled changepoint;
the first detection in a window earns A_tp scaled by NAB's sigmoid of its position (early
is better), later ones in the same window are ignored, each detection outside every window
costs A_fp, a window without a detection costs A_fn. Normalised per profile as
100 (S - S_null) / (S_perfect - S_null), with S_null = n A_fn and S_perfect = n A_tp.

>>> tally = nab_tally([100.0], [100.0], width=60.0)   # detected at the changepoint itself
>>> round(nab_normalise(tally)["standard"], 2)
99.33
>>> nab_normalise(nab_tally([100.0], [], width=60.0))["standard"]   # nothing detected
0.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class Confusion:
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    @classmethod
    def of(cls, truth: npt.ArrayLike, predicted: npt.ArrayLike) -> Confusion:
        t = np.asarray(truth).astype(bool)
        p = np.asarray(predicted).astype(bool)
        if t.shape != p.shape:
            raise ValueError(f"labels {t.shape} and predictions {p.shape} differ in shape")
        return cls(
            tp=int(np.sum(t & p)),
            fp=int(np.sum(~t & p)),
            tn=int(np.sum(~t & ~p)),
            fn=int(np.sum(t & ~p)),
        )

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(
            self.tp + other.tp, self.fp + other.fp, self.tn + other.tn, self.fn + other.fn
        )

    @property
    def f1(self) -> float:
        return _ratio(self.tp, self.tp + (self.fn + self.fp) / 2)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def far(self) -> float:
        """False alarm rate: the share of normal rows flagged."""
        return _ratio(self.fp, self.fp + self.tn)

    @property
    def mar(self) -> float:
        """Missed alarm rate: the share of anomalous rows not flagged."""
        return _ratio(self.fn, self.fn + self.tp)


def _ratio(num: float, den: float) -> float:
    # An empty class gives 0 rather than NaN so that the JSON output stays valid.
    return num / den if den > 0 else 0.0


@dataclass(frozen=True, slots=True)
class NabProfile:
    a_tp: float
    a_fp: float
    a_tn: float
    a_fn: float


# SKAB's table of coefficients (its evaluating code, profiles Standart / LowFP / LowFN).
NAB_PROFILES: dict[str, NabProfile] = {
    "standard": NabProfile(1.0, -0.11, 1.0, -1.0),
    "low_fp": NabProfile(1.0, -0.22, 1.0, -1.0),
    "low_fn": NabProfile(1.0, -0.11, 1.0, -2.0),
}
NAB_WINDOW_S = 60.0


def scaled_sigmoid(position: float) -> float:
    """NAB's weight of a detection at `position` in its window: -1 at the window start,
    0 at its end (about 0.987 at the start, 0 at the end).

    >>> round(scaled_sigmoid(-1.0), 4), scaled_sigmoid(0.0)
    (0.9866, 0.0)
    """
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def changepoint_windows(changepoints: Sequence[float], width: float) -> list[tuple[float, float]]:
    """`[start, end]` to the right of each changepoint; where two would overlap, the later
    one starts where the earlier ends, so no detection is claimed by two windows.

    >>> changepoint_windows([0.0, 50.0, 200.0], 60.0)
    [(0.0, 60.0), (60.0, 110.0), (200.0, 260.0)]
    """
    windows: list[tuple[float, float]] = []
    for cp in sorted(changepoints):
        start = max(cp, windows[-1][1]) if windows else cp
        end = cp + width
        if end > start:
            windows.append((start, end))
    return windows


def predicted_changepoints(ts: npt.ArrayLike, predicted: npt.ArrayLike) -> list[float]:
    """Times where the predicted state changes (the state before the first row is normal).

    >>> predicted_changepoints([1, 2, 3, 4, 5], [0, 1, 1, 0, 0])
    [2.0, 4.0]
    """
    t = np.asarray(ts, dtype=np.float64)
    p = np.asarray(predicted).astype(bool)
    before = np.concatenate([[False], p[:-1]])
    return [float(x) for x in t[p != before]]


def nab_tally(
    changepoints: Sequence[float], detections: Sequence[float], width: float = NAB_WINDOW_S
) -> dict[str, tuple[float, float, float]]:
    """Per profile `(score, null score, perfect score)` of one file; add tallies of several
    files element-wise before `nab_normalise`, as SKAB does."""
    windows = changepoint_windows(changepoints, width)
    first: list[float | None] = [None] * len(windows)
    false_alarms = 0
    for t in sorted(detections):
        i = _window_of(windows, t)
        if i is None:
            false_alarms += 1
        elif first[i] is None:
            first[i] = t
    out: dict[str, tuple[float, float, float]] = {}
    for name, prof in NAB_PROFILES.items():
        score = false_alarms * prof.a_fp
        for (start, end), hit in zip(windows, first, strict=True):
            if hit is None:
                score += prof.a_fn
            else:
                score += prof.a_tp * scaled_sigmoid((hit - end) / (end - start))
        out[name] = (score, len(windows) * prof.a_fn, len(windows) * prof.a_tp)
    return out


def _window_of(windows: list[tuple[float, float]], t: float) -> int | None:
    for i, (start, end) in enumerate(windows):
        if start <= t <= end:
            return i
    return None


def add_tallies(
    a: dict[str, tuple[float, float, float]], b: dict[str, tuple[float, float, float]]
) -> dict[str, tuple[float, float, float]]:
    return {k: (a[k][0] + b[k][0], a[k][1] + b[k][1], a[k][2] + b[k][2]) for k in NAB_PROFILES}


def empty_tally() -> dict[str, tuple[float, float, float]]:
    return dict.fromkeys(NAB_PROFILES, (0.0, 0.0, 0.0))


def nab_normalise(tally: dict[str, tuple[float, float, float]]) -> dict[str, float]:
    """100 for a perfect detector, 0 for one that never detects (no changepoints: 0)."""
    return {
        name: 100.0 * _ratio(score - null, perfect - null)
        for name, (score, null, perfect) in tally.items()
    }

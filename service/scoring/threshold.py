"""Threshold calibration on scores of normal windows, and drift on the scores.

Two methods: a plain quantile of the normal scores, and SPOT (Siffer et al., "Anomaly
Detection in Streams with Extreme Value Theory", KDD 2017), which fits a Generalized Pareto
Distribution to the peaks over a high quantile and extrapolates to a risk far smaller than a
sample of a few hundred scores can show. Either estimate `z` is then widened by `spread`
times the scores' own width, `z - median`, and multiplied by `margin`.

>>> import numpy as np
>>> scores = np.linspace(0.0, 1.0, 101)
>>> round(quantile_threshold(scores, quantile=0.99, margin=1.0), 3)
0.99
>>> round(quantile_threshold(scores, quantile=0.99, margin=1.5), 3)
1.485

The width is the scores' own: a machine whose normal scores vary little around their median
(a mean over many sensors' errors, say) gets a threshold closer to its quantile, in ratio,
than one whose scores vary much.

>>> round(widened(0.99, scores, spread=2.5) / 0.99, 2)
2.24
>>> narrow = np.linspace(0.9, 1.0, 101)
>>> round(widened(0.999, narrow, spread=2.5) / 0.999, 2)
1.12

For exponential scores the tail is exactly a GPD with shape 0, and the quantile of risk
`q` is `-ln(q)`: 6.91 for `q = 1e-3`.

>>> exp_scores = np.random.default_rng(0).exponential(size=5000)
>>> round(spot_threshold(exp_scores, risk=1e-3), 1)
7.1
>>> fit = fit_spot(exp_scores, level=0.98)
>>> fit.peaks, round(fit.gamma, 2), round(fit.sigma, 2)
(100, -0.01, 1.01)

Too few scores for a tail fit: `calibrate` falls back to the quantile and logs why.

>>> from service.core.config import FinetuneSettings, ThresholdSettings
>>> spot = ThresholdSettings(method="spot", quantile=0.99, margin=1.0, spread=0.0)
>>> from structlog.testing import capture_logs
>>> with capture_logs() as logs:
...     threshold = calibrate(np.linspace(0.0, 1.0, 15), spot)
>>> round(threshold, 3), logs[0]["event"], logs[0]["reason"]
(0.99, 'spot_fallback_to_quantile', '15 scores, fewer than twice min_peaks=10')
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import structlog

# river's ADWIN is a thin wrapper of this, its Rust core; `river.drift` itself imports every
# drift detector of river, and with them scipy and scikit-learn: some 900 modules and 72 MB
# of the daemon's resident memory for one class.
from river._river_rust.drift import AdaptiveWindowing

from service.core.config import FinetuneSettings, ThresholdSettings

log = structlog.get_logger(__name__)

# Below this |gamma| the GPD quantile formula loses digits to cancellation; the exponential
# limit is exact to that precision.
GAMMA_ZERO = 1e-8
# Points per interval of the grid on which Grimshaw's equation is searched for sign changes.
GRID_POINTS = 400
# |u v - 1| below this is rounding error, not a sign.
W_NOISE = 1e-12


class SpotFitError(ValueError):
    """The scores do not support a tail fit; the message says why."""


def quantile_threshold(scores: npt.ArrayLike, quantile: float, margin: float) -> float:
    """`margin` times the `quantile` of normal scores: the margin covers what a finite sample
    of normal operation has not shown yet."""
    return float(np.quantile(_checked(scores), quantile) * margin)


def widened(z: float, scores: npt.ArrayLike, spread: float) -> float:
    """`z`, a high quantile of normal `scores`, moved `spread` times their width (`z` minus
    their median) further out.

    Why not a ratio: what normal operation has not shown yet is measured best in the spread
    the scores did show. A fixed ratio (x2) is a different number of such widths on each
    machine: many for a score that averages the errors of 50 sensors (its 99.5 % quantile is
    1.4 times its median), few for one of 8 sensors (2 - 3 times); the first then misses
    what the second would catch."""
    return z + spread * max(z - float(np.median(_checked(scores))), 0.0)


def _checked(scores: npt.ArrayLike) -> npt.NDArray[np.float64]:
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        raise ValueError("cannot calibrate a threshold on no scores")
    if not np.isfinite(values).all():
        # A NaN threshold would compare false with every score: a model that never alerts.
        raise ValueError("cannot calibrate a threshold on non-finite scores")
    return values


@dataclass(frozen=True)
class SpotFit:
    """A GPD with shape `gamma` and scale `sigma` for the excesses over `t`, the initial
    threshold; `peaks` of the `n` scores exceeded it."""

    t: float
    gamma: float
    sigma: float
    peaks: int
    n: int

    def quantile(self, risk: float) -> float:
        """`z_q`: the score that normal operation exceeds with probability `risk`."""
        ratio = risk * self.n / self.peaks
        if abs(self.gamma) < GAMMA_ZERO:
            return self.t - self.sigma * math.log(ratio)
        return self.t + self.sigma / self.gamma * (math.pow(ratio, -self.gamma) - 1.0)


def fit_spot(scores: npt.ArrayLike, level: float = 0.98, min_peaks: int = 10) -> SpotFit:
    """Fits the GPD tail of `scores` above their `level` quantile.

    A few hundred scores give only a handful of peaks over a 0.98 quantile, so `level` is
    lowered until `min_peaks` peaks remain: a fit on a lower threshold is biased a little,
    one on three peaks is noise."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    if not np.isfinite(values).all():
        raise SpotFitError("non-finite scores")
    n = values.size
    if n < 2 * min_peaks:
        raise SpotFitError(f"{n} scores, fewer than twice min_peaks={min_peaks}")
    t = float(np.quantile(values, min(level, 1.0 - min_peaks / n)))
    excesses = values[values > t] - t
    if excesses.size < min_peaks:
        raise SpotFitError(f"{excesses.size} scores above the initial threshold (ties)")
    gamma, sigma = grimshaw(excesses)
    return SpotFit(t, gamma, sigma, int(excesses.size), n)


def spot_threshold(
    scores: npt.ArrayLike, risk: float, level: float = 0.98, min_peaks: int = 10
) -> float:
    """SPOT's `z_q` (without margin) for normal `scores`; `SpotFitError` if it cannot."""
    fit = fit_spot(scores, level, min_peaks)
    if risk >= fit.peaks / fit.n:
        raise SpotFitError(f"risk {risk} is not in the tail (peaks are {fit.peaks / fit.n:.3g})")
    z = fit.quantile(risk)
    if not math.isfinite(z) or z <= fit.t:
        raise SpotFitError(f"fitted quantile {z} is not above the initial threshold {fit.t}")
    return z


def grimshaw(y: npt.NDArray[np.float64]) -> tuple[float, float]:
    """Maximum-likelihood `(gamma, sigma)` of a GPD for positive excesses `y`, by Grimshaw's
    reduction (Technometrics 1993) to one equation in `x = gamma / sigma`, as SPOT does.

    The roots of `u(x) v(x) = 1` lie in `(-1 / max(y), 0)` and `(0, 2 (mean - min) / min^2]`;
    both are searched on a grid for sign changes and refined by bisection, which, unlike a
    gradient solver, cannot wander out of the domain `1 + x y > 0`. The exponential
    (`gamma = 0`, the root `x = 0` that always exists) is a candidate too; the candidate of
    highest likelihood wins."""
    y_min, y_max, y_mean = float(y.min()), float(y.max()), float(y.mean())
    candidates = [(0.0, y_mean)]
    # Log-spaced from next to 0 (a nearly exponential tail puts roots there) to each end:
    # the right end grows as 1 / min(y)^2 and can lie many decades away.
    near_zero = 1e-8 / y_max
    ladder = np.geomspace(1e-8, 0.5, GRID_POINTS // 2)
    left = -np.unique(np.concatenate([ladder, 1.0 - ladder])) / y_max
    right_end = max(2.0 * (y_mean - y_min) / y_min**2, 2 * near_zero)
    right = np.geomspace(near_zero, right_end, GRID_POINTS)
    for grid in (left, right):
        for x in _roots(y, grid):
            gamma = float(np.mean(np.log1p(x * y)))
            if gamma != 0.0:
                candidates.append((gamma, gamma / x))
    return max(candidates, key=lambda c: _log_likelihood(y, *c))


def _grimshaw_w(y: npt.NDArray[np.float64], x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Grimshaw's `u(x) v(x) - 1` at each `x`."""
    xy = np.multiply.outer(np.asarray(x, dtype=np.float64), y)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.mean(1.0 / (1.0 + xy), axis=-1) * (1.0 + np.mean(np.log1p(xy), axis=-1))
    result: npt.NDArray[np.float64] = w - 1.0
    return result


def _roots(
    y: npt.NDArray[np.float64], grid: npt.NDArray[np.float64], iterations: int = 60
) -> list[float]:
    """Bisects every sign change of `_grimshaw_w` between neighbouring grid points. Near
    `x = 0`, `w` is rounding noise around 0, whose sign flips are no roots (that limit is
    the exponential candidate), so values below `W_NOISE` do not count."""
    values = _grimshaw_w(y, grid)
    significant = np.isfinite(values) & (np.abs(values) > W_NOISE)
    changes = significant[:-1] & significant[1:] & (np.sign(values[:-1]) != np.sign(values[1:]))
    found = []
    for i in np.flatnonzero(changes):
        a, b, fa = float(grid[i]), float(grid[i + 1]), float(values[i])
        for _ in range(iterations):
            mid = 0.5 * (a + b)
            fm = float(_grimshaw_w(y, mid))
            if fa * fm <= 0:
                b = mid
            else:
                a, fa = mid, fm
        found.append(0.5 * (a + b))
    return found


def _log_likelihood(y: npt.NDArray[np.float64], gamma: float, sigma: float) -> float:
    if sigma <= 0:
        return -math.inf
    if abs(gamma) < GAMMA_ZERO:
        return float(-y.size * math.log(sigma) - y.sum() / sigma)
    s = 1.0 + gamma / sigma * y
    if (s <= 0).any():
        return -math.inf
    return float(-y.size * math.log(sigma) - (1.0 + 1.0 / gamma) * np.log(s).sum())


def calibrate(scores: npt.ArrayLike, settings: ThresholdSettings) -> float:
    """The threshold that `settings.method` gives for these held-out normal scores, widened
    by `spread` (`widened`) and times `margin`. SPOT falls back to the quantile method, with
    a logged reason, when its fit fails."""
    z = quantile_threshold(scores, settings.quantile, 1.0)
    if settings.method == "spot":
        try:
            z = spot_threshold(
                scores, settings.spot_risk, settings.spot_level, settings.spot_min_peaks
            )
        except SpotFitError as exc:
            log.warning(
                "spot_fallback_to_quantile",
                reason=str(exc),
                scores=int(np.size(scores)),
                quantile=settings.quantile,
            )
    return widened(z, scores, settings.spread) * settings.margin


def fitted_threshold(
    holdout: npt.ArrayLike, learnt: npt.ArrayLike, settings: ThresholdSettings
) -> float:
    """A fit's threshold: calibrated on the `holdout` scores (windows the model did not train
    on), and never below the plain quantile of the scores of all the windows it `learnt`
    (times `margin`), since a learning period shorter than the machine's cycle leaves the
    newest block short of some operating points. That floor is not widened: windows the
    model trained on score low, so their width says how well it fits them, not how normal
    operation varies.

    >>> t = ThresholdSettings(quantile=0.99, margin=1.0, spread=2.5)
    >>> round(fitted_threshold(np.linspace(0.0, 1.0, 101), np.zeros(50), t), 3)
    2.215
    >>> round(fitted_threshold(np.zeros(50), np.linspace(0.0, 1.0, 101), t), 3)
    0.99
    """
    floor = quantile_threshold(learnt, settings.quantile, settings.margin)
    return max(calibrate(holdout, settings), floor)


def promoted_threshold(
    current: float, base: float, calibrated: float, settings: FinetuneSettings
) -> float:
    """The threshold of a promoted fine-tune: its own `calibrated` one, but never below
    `current`, at most `threshold_step` times it, and at most `threshold_ceiling` times
    `base`, the threshold of the fit from scratch (see `FinetuneSettings`).

    >>> from service.core.config import FinetuneSettings
    >>> s = FinetuneSettings(threshold_step=1.25, threshold_ceiling=2.0)
    >>> promoted_threshold(1.0, 1.0, 1.1, s), promoted_threshold(1.0, 1.0, 0.5, s)
    (1.1, 1.0)
    >>> promoted_threshold(1.0, 1.0, 3.0, s), promoted_threshold(1.9, 1.0, 3.0, s)
    (1.25, 2.0)

    Above the ceiling already (`threshold_ceiling` was lowered): it stays where it is.

    >>> promoted_threshold(2.5, 1.0, 3.0, s)
    2.5
    """
    raised = min(calibrated, current * settings.threshold_step, base * settings.threshold_ceiling)
    return max(current, raised)


class ScoreDrift:
    """Detects a change in the level of a machine's scores with ADWIN.

    ADWIN rather than Page-Hinkley: it watches both directions at once and needs no
    magnitude threshold in score units (Page-Hinkley's `threshold` would have to be tuned
    per machine and model, since scores differ by orders of magnitude between them).
    ADWIN's bound assumes bounded values, so scores are fed in units of `scale` (the
    threshold, say) and clipped at `clip`: one extreme window cannot pass for a drift.

    >>> drift = ScoreDrift(scale=1.0)
    >>> rng = np.random.default_rng(1)
    >>> any(drift.update(s) for s in rng.uniform(0.1, 0.3, 1000))
    False
    >>> any(drift.update(s) for s in rng.uniform(0.6, 0.8, 300))
    True
    """

    def __init__(self, scale: float = 1.0, delta: float = 0.002, clip: float = 4.0) -> None:
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be positive and finite, not {scale}")
        self.scale = scale
        self.clip = clip
        self.detections = 0
        self._adwin = Adwin(delta)

    def update(self, score: float) -> bool:
        """Adds one score; True when the scores' level changed. NaN and inf are skipped,
        as one would poison ADWIN's sums for good."""
        if not math.isfinite(score):
            return False
        drifted = self._adwin.update(min(score / self.scale, self.clip))
        self.detections += drifted
        return drifted

    @property
    def level(self) -> float:
        """Mean score (in units of `scale`) over ADWIN's current window."""
        return self._adwin.estimation


class Adwin:
    """`river.drift.ADWIN` with its defaults, on river's Rust core directly (what its
    `update` and `estimation` do; tests/unit/test_threshold.py checks the two agree)."""

    def __init__(self, delta: float) -> None:
        self.delta = delta
        self._drifted = False
        self._core = self._new()

    def _new(self) -> AdaptiveWindowing:
        return AdaptiveWindowing(
            delta=self.delta, clock=32, max_buckets=5, min_window_length=5, grace_period=10
        )

    def update(self, x: float) -> bool:
        """Adds `x`; True when a change was detected. As in river, a detection resets the
        window at the next value, not at once: `estimation` is still the old window's."""
        if self._drifted:
            self._core = self._new()
        self._drifted = bool(self._core.update(x))
        return self._drifted

    @property
    def estimation(self) -> float:
        width = self._core.get_width()
        return float(self._core.get_total() / width) if width else 0.0

"""Threshold calibration on scores of normal windows.

>>> import numpy as np
>>> scores = np.linspace(0.0, 1.0, 101)
>>> round(quantile_threshold(scores, quantile=0.99, margin=1.0), 3)
0.99
>>> round(quantile_threshold(scores, quantile=0.99, margin=1.5), 3)
1.485
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from service.config import ThresholdSettings


def quantile_threshold(scores: npt.ArrayLike, quantile: float, margin: float) -> float:
    """`margin` times the `quantile` of normal scores: the margin covers what a finite sample
    of normal operation has not shown yet."""
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        raise ValueError("cannot calibrate a threshold on no scores")
    return float(np.quantile(values, quantile) * margin)


def calibrate(scores: npt.ArrayLike, settings: ThresholdSettings) -> float:
    """The threshold that `settings.method` gives for these normal scores."""
    return quantile_threshold(scores, settings.quantile, settings.margin)

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from structlog.testing import capture_logs

from service.core.config import ThresholdSettings
from service.core.types import FloatArray
from service.scoring.threshold import (
    Adwin,
    ScoreDrift,
    SpotFitError,
    calibrate,
    fit_spot,
    fitted_threshold,
    grimshaw,
    quantile_threshold,
    spot_threshold,
)


def gpd_sample(n: int, gamma: float, sigma: float, seed: int) -> FloatArray:
    """Inverse-CDF draws of a GPD; `gamma = 0` is the exponential."""
    u = np.random.default_rng(seed).uniform(size=n)
    if gamma == 0:
        return -sigma * np.log(u)
    return sigma / gamma * (u ** (-gamma) - 1)


def gpd_quantile(risk: float, gamma: float, sigma: float) -> float:
    if gamma == 0:
        return -sigma * math.log(risk)
    return sigma / gamma * (risk ** (-gamma) - 1)


@pytest.mark.parametrize(
    ("gamma", "tolerance"),
    [(0.0, 0.05), (0.2, 0.10), (-0.2, 0.05)],
    ids=["exponential", "heavy-tail", "bounded-tail"],
)
def test_spot_recovers_known_quantiles(gamma: float, tolerance: float) -> None:
    """The median over seeds is close to the truth: SPOT is about unbiased. Every single
    estimate is within a factor that 5000 scores (100 peaks) allow."""
    risk = 1e-3
    truth = gpd_quantile(risk, gamma, 1.0)
    estimates = np.array([spot_threshold(gpd_sample(5000, gamma, 1.0, s), risk) for s in range(20)])
    assert abs(np.median(estimates) / truth - 1) < tolerance
    assert (np.abs(estimates / truth - 1) < 0.35).all()


def test_grimshaw_recovers_the_shape_on_a_large_sample() -> None:
    for gamma in (-0.3, 0.0, 0.3):
        fitted_gamma, sigma = grimshaw(gpd_sample(20000, gamma, 2.0, seed=1))
        assert abs(fitted_gamma - gamma) < 0.05
        assert abs(sigma / 2.0 - 1) < 0.05


def test_spot_is_above_the_initial_threshold_on_small_samples() -> None:
    """60-300 scores (a holdout): every fit succeeds or fails cleanly, none returns a
    threshold below the peaks it was fitted on."""
    for seed in range(50):
        rng = np.random.default_rng(seed)
        scores = rng.gamma(2.0, 0.05, size=int(rng.integers(60, 300)))
        try:
            z = spot_threshold(scores, risk=1e-4)
        except SpotFitError:
            continue
        assert math.isfinite(z)
        assert z > np.quantile(scores, 0.9)


def test_initial_level_is_lowered_to_keep_enough_peaks() -> None:
    scores = gpd_sample(100, 0.0, 1.0, seed=3)
    fit = fit_spot(scores, level=0.98, min_peaks=10)
    assert fit.peaks == 10
    assert fit.t == pytest.approx(np.quantile(scores, 0.9))


@pytest.mark.parametrize(
    ("scores", "reason"),
    [
        (np.linspace(0, 1, 15), "fewer than twice min_peaks"),
        (np.full(200, 0.3), "above the initial threshold"),
        (np.r_[np.linspace(0, 1, 99), np.nan], "non-finite"),
    ],
    ids=["too-few", "ties", "nan"],
)
def test_spot_fit_failures_say_why(scores: FloatArray, reason: str) -> None:
    with pytest.raises(SpotFitError, match=reason):
        spot_threshold(scores, risk=1e-4)


def test_risk_outside_the_tail_is_refused() -> None:
    with pytest.raises(SpotFitError, match="not in the tail"):
        spot_threshold(gpd_sample(1000, 0.0, 1.0, seed=0), risk=0.1)


def test_calibrate_falls_back_to_the_quantile_with_a_logged_reason() -> None:
    settings = ThresholdSettings(method="spot", quantile=0.99, margin=1.5)
    scores = np.full(100, 0.2)
    with capture_logs() as logs:
        threshold = calibrate(scores, settings)
    assert threshold == pytest.approx(0.3)
    assert logs == [
        {
            "event": "spot_fallback_to_quantile",
            "log_level": "warning",
            "reason": logs[0]["reason"],
            "scores": 100,
            "quantile": 0.99,
        }
    ]
    assert "initial threshold" in logs[0]["reason"]


def test_calibrate_applies_the_margin_to_both_methods() -> None:
    scores = gpd_sample(2000, 0.0, 1.0, seed=4)
    spot = ThresholdSettings(method="spot", spot_risk=1e-4, margin=1.0, spread=0.0)
    quantile = ThresholdSettings(method="quantile", quantile=0.99, margin=1.0, spread=0.0)
    for settings in (spot, quantile):
        plain = calibrate(scores, settings)
        wider = calibrate(scores, settings.model_copy(update={"margin": 1.25}))
        assert wider == pytest.approx(1.25 * plain)
    assert calibrate(scores, spot) == pytest.approx(spot_threshold(scores, 1e-4))


def test_calibrate_widens_both_methods_by_the_scores_own_width() -> None:
    scores = gpd_sample(2000, 0.0, 1.0, seed=4)
    median = float(np.median(scores))
    for method in ("spot", "quantile"):
        plain = ThresholdSettings(method=method, spot_risk=1e-4, margin=1.0, spread=0.0)
        z = calibrate(scores, plain)
        widened = calibrate(scores, plain.model_copy(update={"spread": 2.5, "margin": 1.5}))
        assert widened == pytest.approx((z + 2.5 * (z - median)) * 1.5)


def test_the_default_margin_is_a_number_of_widths_not_a_ratio() -> None:
    """Two machines whose held-out scores have the same 99.5 % quantile: one whose scores
    vary little around their median (an average over many sensors' errors), one whose
    scores vary much. A ratio (x2) gave both the same threshold; the defaults give the
    steady one a threshold nearer its quantile, since a score that varied so little in
    normal operation is unusual sooner."""
    rng = np.random.default_rng(0)
    steady = 1.0 + 0.05 * rng.standard_normal(400)
    varied = np.exp(0.4 * rng.standard_normal(400))
    varied *= np.quantile(steady, 0.995) / np.quantile(varied, 0.995)
    settings = ThresholdSettings()
    assert (settings.margin, settings.spread) == (1.0, 2.5)
    q = float(np.quantile(steady, 0.995))
    assert calibrate(steady, settings) / q == pytest.approx(1.3, abs=0.05)
    assert calibrate(varied, settings) / q == pytest.approx(2.5, abs=0.1)


def test_a_fits_floor_is_the_plain_quantile_of_the_learnt_windows() -> None:
    """Windows the model trained on score low: their median would widen the floor by how
    well the model fits them, not by how normal operation varies."""
    settings = ThresholdSettings(quantile=0.99, margin=1.5, spread=2.5)
    holdout = np.full(100, 1.0)
    learnt = np.r_[np.full(900, 0.1), np.full(100, 2.0)]
    assert fitted_threshold(holdout, learnt, settings) == pytest.approx(2.0 * 1.5)
    assert fitted_threshold(holdout * 3, learnt, settings) == pytest.approx(4.5)


def test_spot_extrapolates_past_the_quantile_method() -> None:
    """With 300 normal scores the 0.995 quantile is the sample's second largest; SPOT's
    1e-4 risk sits beyond it, near the distribution's true quantile."""
    scores = gpd_sample(300, 0.0, 1.0, seed=5)
    spot = calibrate(scores, ThresholdSettings(method="spot", margin=1.0))
    quantile = calibrate(scores, ThresholdSettings(method="quantile", margin=1.0))
    assert spot > quantile
    assert spot > scores.max()


def test_quantile_threshold_and_margin() -> None:
    scores = np.arange(1.0, 101.0)
    assert quantile_threshold(scores, 0.5, 1.0) == pytest.approx(50.5)
    assert quantile_threshold(scores, 0.5, 2.0) == pytest.approx(101.0)
    with pytest.raises(ValueError, match="no scores"):
        quantile_threshold([], 0.9, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        quantile_threshold([1.0, math.inf], 0.9, 1.0)


def test_settings_accept_spot_and_refuse_unknown_methods() -> None:
    assert ThresholdSettings(method="spot").spot_risk == 1e-4
    with pytest.raises(ValueError, match="method"):
        ThresholdSettings(method="pot")  # type: ignore[arg-type]


def test_score_drift_stays_quiet_on_stationary_scores() -> None:
    drift = ScoreDrift(scale=0.2)
    scores = np.random.default_rng(0).gamma(4.0, 0.025, size=5000)
    assert not any(drift.update(float(s)) for s in scores)
    assert drift.detections == 0
    assert drift.level == pytest.approx(0.5, abs=0.05)


def test_score_drift_detects_a_level_shift_and_skips_non_finite() -> None:
    drift = ScoreDrift(scale=0.2)
    rng = np.random.default_rng(1)
    for s in rng.gamma(4.0, 0.025, size=1000):
        drift.update(float(s))
    assert not drift.update(math.nan)
    assert not drift.update(math.inf)
    flagged = [drift.update(float(s)) for s in rng.gamma(4.0, 0.04, size=500)]
    assert any(flagged)
    assert drift.detections >= 1
    assert drift.level > 0.6


def test_score_drift_does_not_depend_on_the_scores_unit() -> None:
    """Scores in threshold units: the same stream at a thousandth of the scale, with a
    thousandth of the scale, drifts at the same points."""
    rng = np.random.default_rng(2)
    scores = np.r_[rng.gamma(4.0, 0.025, size=800), rng.gamma(4.0, 0.05, size=400)]
    big, small = ScoreDrift(scale=0.2), ScoreDrift(scale=0.0002)
    assert [big.update(float(s)) for s in scores] == [small.update(float(s) / 1000) for s in scores]
    with pytest.raises(ValueError, match="scale"):
        ScoreDrift(scale=0.0)


def test_adwin_on_rivers_core_agrees_with_rivers_adwin() -> None:
    """`Adwin` stands for `river.drift.ADWIN` (which the daemon no longer imports, for the
    scipy and scikit-learn it brings): same detections and estimates on shifting streams."""
    from river.drift import ADWIN

    rng = np.random.default_rng(3)
    stream = np.r_[
        rng.gamma(4.0, 0.025, 700), rng.gamma(4.0, 0.06, 400), rng.uniform(0, 4, 300), [0.0] * 50
    ]
    ours, theirs = Adwin(0.002), ADWIN(delta=0.002)
    assert ours.estimation == theirs.estimation == 0.0
    detections = 0
    for x in stream:
        theirs.update(float(x))
        assert ours.update(float(x)) == theirs.drift_detected
        assert ours.estimation == pytest.approx(theirs.estimation, rel=1e-12, abs=1e-12)
        detections += theirs.drift_detected
    assert detections >= 2


def test_the_daemon_does_not_import_scipy_or_sklearn() -> None:
    """A fresh interpreter importing the daemon: river's drift package (all its detectors)
    would bring scipy and scikit-learn, some 70 MB resident."""
    code = "import sys, service.app; print(sorted({'scipy', 'sklearn'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

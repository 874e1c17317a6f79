"""The detection benchmark's peers and plumbing, on small synthetic data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import detection
from benchmarks.detection import (
    AlwaysAlarm,
    FitOnce,
    HalfSpaceTreesPeer,
    IsolationForestPeer,
    PcaT2Q,
    RowPeer,
    is_held_out,
    main,
    with_update,
)
from service.core.config import Settings, ThresholdSettings
from service.core.types import FloatArray
from tests.unit.test_evaluate import write_skab

SENSORS = ("a", "b", "c", "d")
WINDOW = 10


def normal_windows(n: int, seed: int) -> FloatArray:
    """Four sensors driven by one load plus noise, as windows `[n, WINDOW, 4]`."""
    rng = np.random.default_rng(seed)
    load = rng.normal(size=n + WINDOW)[:, None]
    rows = load * np.array([1.0, 2.0, -1.0, 0.5]) + 0.3 * rng.normal(size=(n + WINDOW, 4))
    rows += np.array([10.0, 5.0, 0.0, 100.0])
    return np.stack([rows[i : i + WINDOW] for i in range(n)]).astype(np.float32)


@pytest.mark.parametrize("peer", [PcaT2Q, IsolationForestPeer, HalfSpaceTreesPeer])
def test_peers_pass_normal_rows_and_flag_a_far_one(peer: type[RowPeer]) -> None:
    detector = peer(SENSORS)
    detector.fit(normal_windows(400, seed=1), ThresholdSettings())
    normal = normal_windows(300, seed=2)
    scores, errors = detector.score_many(normal)
    assert errors.shape == (300, 4)
    assert np.mean(scores > detector.threshold) < 0.05
    far = normal[:20].copy()
    far[:, -1, :] += np.array([15.0, -30.0, 15.0, 8.0])  # every sensor, far off its relation
    assert (detector.score_many(far)[0] > detector.threshold).all()


def test_always_alarm_flags_everything() -> None:
    detector = AlwaysAlarm(SENSORS)
    detector.fit(normal_windows(50, seed=1), ThresholdSettings())
    assert (detector.score_many(normal_windows(30, seed=2))[0] > detector.threshold).all()


def test_threshold_methods_share_one_fit_and_differ_in_threshold_only() -> None:
    settings = with_update(Settings(), {"model": {"epochs": 2}, "window": {"length": WINDOW}})
    fits = FitOnce(settings)
    learn, probe = normal_windows(200, seed=3), normal_windows(20, seed=4)
    spot = ThresholdSettings(method="spot", spot_min_peaks=5)
    quantile_scorer = fits.factory(settings.threshold)(SENSORS)
    spot_scorer = fits.factory(spot)(SENSORS)
    quantile_scorer.fit(learn, settings.threshold)
    spot_scorer.fit(learn, spot)
    assert len(fits.fits) == 1
    assert quantile_scorer.threshold != spot_scorer.threshold
    np.testing.assert_array_equal(
        quantile_scorer.score_many(probe)[0], spot_scorer.score_many(probe)[0]
    )


def test_odd_numbered_files_are_held_out() -> None:
    assert [is_held_out(Path(f"{i}.csv")) for i in range(4)] == [False, True, False, True]


def test_with_update_replaces_only_the_named_fields() -> None:
    settings = with_update(Settings(), {"model": {"epochs": 7}, "window": {"length": 12}})
    assert (settings.model.epochs, settings.window.length) == (7, 12)
    assert settings.model.kind == Settings().model.kind


def test_prints_one_table_with_the_published_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # main() configures structlog for a run; left so, later tests would log to this test's
    # captured stderr, closed after it.
    monkeypatch.setattr(detection, "configure_logging", lambda *args: None)
    (tmp_path / "valve1").mkdir()
    for i in range(2):
        write_skab(tmp_path / "valve1" / f"{i}.csv", 560, (480, 540), seed=i)
    assert main(["--data", str(tmp_path), "--only", "PCA"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert lines[0].split("|")[1].strip() == "detector"
    assert lines[2].split("|")[1].strip() == "PCA T²+Q"
    assert any("SKAB published: Conv-AE" in line and "0.78" in line for line in lines)

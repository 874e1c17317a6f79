"""SKAB's metrics against examples computed by hand from its formulas."""

from __future__ import annotations

import math

import pytest

from service.offline.scoring_metrics import (
    Confusion,
    add_tallies,
    changepoint_windows,
    empty_tally,
    nab_normalise,
    nab_tally,
    predicted_changepoints,
)


def test_point_metrics_follow_skab_formulas() -> None:
    c = Confusion.of([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 1, 0, 0, 0, 0])
    assert c == Confusion(tp=3, fp=1, tn=4, fn=2)
    assert c.f1 == pytest.approx(3 / (3 + (2 + 1) / 2))  # SKAB's F1, not 2PR/(P+R) by name
    assert c.precision == pytest.approx(3 / 4)
    assert c.recall == pytest.approx(3 / 5)
    assert c.far == pytest.approx(1 / 5)
    assert c.mar == pytest.approx(2 / 5)


def test_counts_are_pooled_over_files_before_dividing() -> None:
    a = Confusion.of([1, 1, 0, 0], [1, 1, 1, 1])  # F1 2/3 alone
    b = Confusion.of([1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0])  # F1 0 alone
    pooled = a + b
    assert pooled == Confusion(tp=2, fp=2, tn=5, fn=1)
    assert pooled.f1 == pytest.approx(2 / (2 + 3 / 2))


def test_always_alarm_has_far_one_and_mar_zero() -> None:
    c = Confusion.of([1, 0, 1, 0, 1], [1, 1, 1, 1, 1])
    assert (c.far, c.mar) == (1.0, 0.0)
    assert c.f1 == pytest.approx(3 / (3 + 2 / 2))


def test_empty_classes_give_zero_not_nan() -> None:
    c = Confusion.of([0, 0], [0, 0])
    assert (c.f1, c.precision, c.recall, c.mar, c.far) == (0.0, 0.0, 0.0, 0.0, 0.0)


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="shape"):
        Confusion.of([1, 0], [1])


def test_nab_first_detection_in_window_scored_by_sigmoid() -> None:
    sig = 2 / (1 + math.exp(5 * -0.5)) - 1  # detection half-way through its window
    tally = nab_tally([0.0], [30.0, 40.0], width=60.0)  # the second one is ignored
    assert tally["standard"] == pytest.approx((sig, -1.0, 1.0))
    assert nab_normalise(tally)["standard"] == pytest.approx(100 * (sig + 1) / 2)


def test_nab_profiles_weigh_false_alarms_and_misses() -> None:
    sig = 2 / (1 + math.exp(5 * -0.5)) - 1
    scores = nab_normalise(nab_tally([0.0], [30.0, 200.0], width=60.0))
    assert scores["standard"] == pytest.approx(100 * (sig - 0.11 + 1) / 2)
    assert scores["low_fp"] == pytest.approx(100 * (sig - 0.22 + 1) / 2)
    assert scores["low_fn"] == pytest.approx(100 * (sig - 0.11 + 2) / 3)


def test_nab_detection_at_window_end_scores_zero_and_miss_is_null() -> None:
    assert nab_normalise(nab_tally([0.0], [60.0]))["standard"] == pytest.approx(50.0)
    missed = nab_tally([0.0, 1000.0], [10.0])
    assert missed["standard"][1:] == (-2.0, 2.0)
    assert nab_normalise(nab_tally([0.0], []))["standard"] == 0.0


def test_nab_tallies_add_across_files() -> None:
    total = add_tallies(add_tallies(empty_tally(), nab_tally([0.0], [0.0])), nab_tally([0.0], []))
    score, null, perfect = total["standard"]
    assert (null, perfect) == (-2.0, 2.0)
    assert score == pytest.approx((2 / (1 + math.exp(-5)) - 1) - 1.0)


def test_overlapping_windows_do_not_share_a_detection() -> None:
    assert changepoint_windows([0.0, 57.0], 60.0) == [(0.0, 60.0), (60.0, 117.0)]
    tally = nab_tally([0.0, 57.0], [58.0])  # in the first window only: the second is missed
    assert tally["standard"][0] == pytest.approx(2 / (1 + math.exp(5 * -2 / 60)) - 1 - 1.0)


def test_predicted_changepoints_are_alert_state_changes() -> None:
    assert predicted_changepoints([0, 1, 2, 3], [1, 1, 0, 1]) == [0.0, 2.0, 3.0]
    assert predicted_changepoints([0, 1], [0, 0]) == []

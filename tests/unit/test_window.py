from __future__ import annotations

import numpy as np
import pytest

from service.core.types import Reading, RejectReason
from service.stream.window import MachineWindower


def windower(**kw: float) -> MachineWindower:
    args = {"period": 1.0, "length": 4, "stride": 1, "max_stale": 2.5, "lateness": 2.0} | kw
    return MachineWindower("m", ("a", "b"), **args)  # type: ignore[arg-type]


def feed(w: MachineWindower, times: list[float], sensors: tuple[str, ...] = ("a", "b")) -> None:
    for t in times:
        for s in sensors:
            assert w.add(Reading("m", s, t, t)) is None


def test_windows_hold_the_grid_values_and_slide_by_stride() -> None:
    w = windower(stride=2)
    feed(w, [float(t) for t in range(12)])
    out = w.advance()
    assert [x.end_ts for x in out] == [3.0, 5.0, 7.0, 9.0]  # 10, 11 are within lateness
    assert out[0].values.shape == (4, 2)
    np.testing.assert_array_equal(out[1].values[:, 0], [2, 3, 4, 5])


def test_readings_between_grid_steps_hold_the_last_value() -> None:
    w = windower(lateness=0.0, length=2)
    for t, v in [(0.0, 1.0), (0.4, 2.0), (1.2, 3.0), (2.0, 4.0)]:
        assert w.add(Reading("m", "a", t, v)) is None
        assert w.add(Reading("m", "b", t, v)) is None
    out = w.advance()
    assert [x.values[:, 0].tolist() for x in out] == [[1.0, 2.0], [2.0, 4.0]]


def test_out_of_order_within_lateness_is_used_in_order() -> None:
    w = windower(lateness=3.0, length=3)
    feed(w, [0.0, 1.0, 3.0, 2.0, 4.0, 5.0, 6.0])
    out = w.advance()
    assert out[0].values[:, 0].tolist() == [0.0, 1.0, 2.0]


def test_reading_behind_emitted_grid_is_late_and_not_used() -> None:
    w = windower(lateness=1.0)
    feed(w, [float(t) for t in range(10)])
    w.advance()
    rejection = w.add(Reading("m", "a", 3.5, 99.0))
    assert rejection is not None
    assert rejection.reason == RejectReason.LATE
    assert all(99.0 not in x.values for x in w.advance())


def test_same_sensor_and_timestamp_again_is_a_duplicate() -> None:
    w = windower()
    assert w.add(Reading("m", "a", 5.0, 1.0)) is None
    rejection = w.add(Reading("m", "a", 5.0, 1.0))
    assert rejection is not None
    assert rejection.reason == RejectReason.DUPLICATE


def test_unknown_sensor_is_rejected() -> None:
    rejection = windower().add(Reading("m", "c", 1.0, 1.0))
    assert rejection is not None
    assert rejection.reason == RejectReason.UNKNOWN_SENSOR


def test_a_silent_sensor_is_a_gap_that_restarts_the_window() -> None:
    w = windower(lateness=0.0, max_stale=1.5, length=3)
    feed(w, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], sensors=("a",))
    feed(w, [0.0, 1.0, 2.0], sensors=("b",))  # b stops after 2 s
    out = w.advance()
    assert [x.end_ts for x in out] == [2.0, 3.0]  # 3.0 still holds b's value from 2.0
    assert w.gaps == 1


def test_clock_jump_forward_restarts_without_a_step_per_second() -> None:
    w = windower(lateness=0.0, max_stale=1.5, length=2)
    feed(w, [0.0, 1.0, 2.0])
    w.advance()
    jump = 10.0 * 365 * 86400
    feed(w, [jump, jump + 1, jump + 2])
    out = w.advance()
    # Step 3 still holds the values of step 2 (max_stale 1.5); then the gap, then the jump.
    assert [x.end_ts for x in out] == [3.0, jump + 1, jump + 2]
    assert w.gaps == 1


@pytest.mark.parametrize("period", [0.5, 2.0])
def test_grid_follows_the_sample_period(period: float) -> None:
    w = windower(period=period, lateness=0.0, max_stale=period * 1.5, length=2)
    feed(w, [i * period for i in range(5)])
    assert [x.end_ts for x in w.advance()] == [i * period for i in range(1, 5)]

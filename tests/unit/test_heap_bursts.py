"""The heap is trimmed once a burst of input has drained, and not on a steady trickle."""

from __future__ import annotations

import pytest

from service.core import heap


@pytest.fixture
def trims(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(heap, "trim", lambda: calls.append(1) or True)
    monkeypatch.setattr(heap, "TRIM_SPACING", 0.0)
    return calls


def test_a_drained_burst_is_trimmed_once(trims: list[int]) -> None:
    taken, fill = [0], [0.0]
    keeper = heap.AfterBursts(lambda: taken[0], lambda: fill[0])
    fill[0] = heap.BURST_FILL  # a backlog builds up
    assert not keeper.poll()  # not while it waits
    taken[0], fill[0] = 1000, 0.0
    assert keeper.poll()
    assert not keeper.poll()  # nothing new since
    assert trims == [1]


def test_many_readings_taken_count_as_a_burst_too(trims: list[int]) -> None:
    taken = [0]
    keeper = heap.AfterBursts(lambda: taken[0], lambda: 0.0)
    taken[0] = heap.BURST_READINGS - 1
    assert not keeper.poll()
    taken[0] += 1
    assert keeper.poll()
    assert trims == [1]


def test_trims_are_spaced(trims: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "TRIM_SPACING", 3600.0)
    taken = [heap.BURST_READINGS]
    keeper = heap.AfterBursts(lambda: taken[0], lambda: 0.0)
    taken[0] *= 2
    assert not keeper.poll()  # the last trim (at start) was too recent
    assert trims == []

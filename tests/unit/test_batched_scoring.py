"""Batched scoring gives the scores of scoring each window alone.

The pipeline scores every window a cycle completed for a machine in one model call, for
many machines in one cycle; an alert must not depend on how readings were batched.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from service.core.config import ModelSettings, Settings, ThresholdSettings
from service.core.types import Score, Window
from service.scoring import passes
from service.scoring.detector import Detector
from service.stream.pipeline import Pipeline
from tests.unit.wiring import wired_pipeline

WINDOW = 12
# Machines with different sensor counts, so their detectors differ in shape as well.
MACHINES = {"press-1": 3, "pump-2": 5, "fan-3": 8}
RTOL, ATOL = 1e-5, 1e-7


def signal(rng: np.random.Generator, n: int, sensors: int, offset: float = 0.0) -> np.ndarray:
    t = np.arange(n + WINDOW)[:, None] + rng.uniform(0, 10, sensors)
    rows = np.sin(t / 4.0) + 0.05 * rng.standard_normal((n + WINDOW, sensors)) + offset
    return np.stack([rows[i : i + WINDOW] for i in range(n)]).astype(np.float32)


@pytest.fixture(scope="module")
def detectors() -> dict[str, Detector]:
    settings = ModelSettings(epochs=3, seed=1)
    fitted = {}
    for k, (name, n_sensors) in enumerate(MACHINES.items()):
        rng = np.random.default_rng(k)
        sensors = tuple(f"s{i}" for i in range(n_sensors))
        detector = Detector.new(sensors, WINDOW, settings)
        detector.fit(signal(rng, 80, n_sensors), ThresholdSettings())
        fitted[name] = detector
    return fitted


@pytest.fixture(scope="module")
def windows() -> dict[str, np.ndarray]:
    """Normal windows and some far off (anomalous), for each machine."""
    out = {}
    for k, (name, n_sensors) in enumerate(MACHINES.items()):
        rng = np.random.default_rng(100 + k)
        out[name] = np.concatenate(
            [signal(rng, 30, n_sensors), signal(rng, 7, n_sensors, offset=3.0)]
        )
    return out


def test_batch_scores_equal_single_window_scores(
    detectors: dict[str, Detector], windows: dict[str, np.ndarray]
) -> None:
    for name, detector in detectors.items():
        batch_scores, batch_errors = detector.score_many(windows[name])
        singles = [detector.score_many(w[None]) for w in windows[name]]
        single_scores = np.concatenate([s for s, _ in singles])
        single_errors = np.concatenate([e for _, e in singles])
        assert batch_scores.shape == (len(windows[name]),)
        assert batch_errors.shape == (len(windows[name]), MACHINES[name])
        np.testing.assert_allclose(batch_scores, single_scores, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(batch_errors, single_errors, rtol=RTOL, atol=ATOL)


def test_batch_of_any_split_gives_the_same_scores(
    detectors: dict[str, Detector], windows: dict[str, np.ndarray]
) -> None:
    detector = detectors["fan-3"]
    whole, _ = detector.score_many(windows["fan-3"])
    for size in (1, 2, 5, 16):
        parts = [
            detector.score_many(windows["fan-3"][i : i + size])[0]
            for i in range(0, len(windows["fan-3"]), size)
        ]
        np.testing.assert_allclose(np.concatenate(parts), whole, rtol=RTOL, atol=ATOL)


def _pipeline(detectors: dict[str, Detector]) -> tuple[Pipeline, list[Score]]:
    """A pipeline (not started) whose machines score with `detectors`; it records every
    score its alert trackers see."""
    pipeline, _, _ = wired_pipeline(Settings(window={"length": WINDOW}))
    seen: list[Score] = []
    for name, detector in detectors.items():
        runtime = pipeline._add_machine(name, detector.sensors, None)
        runtime.install(detector)
        tracker_observe = runtime.tracker.observe

        def observe(score: Score, _observe: Any = tracker_observe) -> Any:
            seen.append(score)
            return _observe(score)

        runtime.tracker.observe = observe  # type: ignore[method-assign]
    return pipeline, seen


def test_one_cycle_over_several_machines_scores_each_window_as_alone(
    detectors: dict[str, Detector], windows: dict[str, np.ndarray]
) -> None:
    pipeline, seen = _pipeline(detectors)
    cycle = {
        name: [
            Window(name, float(i), detectors[name].sensors, values)
            for i, values in enumerate(windows[name])
        ]
        for name in detectors
    }
    pipeline._score(cycle)

    for name, detector in detectors.items():
        got = [s for s in seen if s.machine == name]
        assert [s.end_ts for s in got] == [w.end_ts for w in cycle[name]]
        alone = np.array([detector.score_many(w[None])[0][0] for w in windows[name]])
        np.testing.assert_allclose([s.score for s in got], alone, rtol=RTOL, atol=ATOL)
        assert all(s.threshold == detector.threshold for s in got)
    # The far-off windows score above the normal ones, so the comparison is not vacuous.
    scores = np.array([s.score for s in seen if s.machine == "fan-3"])
    assert scores[-7:].min() > scores[:30].max()


def test_a_large_cycle_scored_in_parts_on_the_scoring_thread_scores_the_same(
    detectors: dict[str, Detector], windows: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's cycle is scored in parts on the scoring thread (the model calls of one part
    beside the Python of the part before): the same scores, in the same order, as one call
    on the pipeline's thread."""
    cycle = {
        name: [
            Window(name, float(i), detectors[name].sensors, values)
            for i, values in enumerate(windows[name])
        ]
        for name in detectors
    }
    whole, seen_whole = _pipeline(detectors)
    monkeypatch.setattr(passes, "OVERLAP_WINDOWS", 10**9)
    whole._score(cycle)

    parts, seen_parts = _pipeline(detectors)
    calls: list[tuple[str, list[str]]] = []
    score = parts.scoring.scorer.score

    def recorded(work: Any) -> Any:
        calls.append((threading.current_thread().name, list(work)))
        return score(work)

    parts.scoring.scorer.score = recorded  # type: ignore[method-assign]
    monkeypatch.setattr(passes, "OVERLAP_WINDOWS", 1)
    parts._score(cycle)

    # 111 windows in up to 4 parts of about 28: one machine (37 windows) a part.
    assert [machines for _, machines in calls] == [[name] for name in detectors]
    assert all(thread.startswith("scoring") for thread, _ in calls)
    order = [(s.machine, s.end_ts) for s in seen_whole]
    assert [(s.machine, s.end_ts) for s in seen_parts] == order
    np.testing.assert_allclose(
        [s.score for s in seen_parts], [s.score for s in seen_whole], rtol=RTOL, atol=ATOL
    )
    assert len(seen_parts) == sum(len(w) for w in cycle.values())

"""A new machine's training set is its first `learning.windows` windows, whatever batches the
stream came in; the windows past them are scored by the fitted model, none left out."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest

from service.core.config import Settings
from service.core.metrics import Metrics
from service.core.types import MachineState, Reading, Window
from service.learning.finetune import FineTuner
from service.scoring.detector import Detector
from service.stream.arrivals import Batch
from service.stream.learning import FitRequest, FitResult
from service.stream.machines import MachineRuntime
from service.stream.pipeline import Pipeline
from tests.synthetic import SENSORS, machine_rows
from tests.unit.wiring import wired_pipeline

LEARN = 20
TOTAL = 38  # the 18 past the training set fit the backlog (room for LEARN)


def stream() -> list[Window]:
    """Windows told apart by their values: window `i` is all `i`."""
    return [
        Window("pump-1", float(i), tuple(SENSORS), np.full((10, len(SENSORS)), float(i)))
        for i in range(TOTAL)
    ]


@pytest.mark.parametrize("cut", [1, 7, LEARN, TOTAL])
def test_training_set_is_the_first_windows_and_the_rest_wait_for_the_model(cut: int) -> None:
    settings = Settings.model_validate({"learning": {"windows": LEARN}})
    runtime = MachineRuntime("pump-1", settings, tuple(SENSORS), None)
    windows = stream()
    trainings, fitting = [], []
    for start in range(0, TOTAL, cut):
        training = runtime.collect(windows[start : start + cut])
        if training is not None:
            trainings.append(training)
        fitting.append(runtime.describe()["fitting"])  # /api/machines tells it
    assert len(trainings) == 1
    assert [int(w[0, 0]) for w in trainings[0]] == list(range(LEARN))
    # Fitting from the batch that completed the training set on.
    assert fitting == [start + cut >= LEARN for start in range(0, TOTAL, cut)]
    detector = cast(Detector, SimpleNamespace(threshold=1.0, version=1))
    backlog = runtime.install(detector)
    assert runtime.state == MachineState.SCORING
    assert runtime.describe()["fitting"] is False
    assert [w.end_ts for w in backlog] == [float(i) for i in range(LEARN, TOTAL)]


def test_windows_past_the_backlog_are_counted_when_the_model_comes() -> None:
    settings = Settings.model_validate({"learning": {"windows": LEARN}})
    runtime = MachineRuntime("pump-1", settings, tuple(SENSORS), None)
    windows = stream() + stream()  # 76: 20 to learn from, 56 waiting, room for 20
    assert runtime.collect(windows) is not None
    assert runtime.backlog_dropped == 2 * TOTAL - 2 * LEARN
    backlog = runtime.install(cast(Detector, SimpleNamespace(threshold=1.0)))
    assert len(backlog) == LEARN
    assert runtime.backlog_dropped == 0


ROWS = list(machine_rows(1_000_000.0, 60))  # 51 windows of 10 steps, the last held back


def one_big_batch(tmp_path: Path) -> tuple[Pipeline, FineTuner, Metrics, FitRequest]:
    """A pipeline that took all of ROWS for a new machine in one batch (a replay's), and the
    fit job its first LEARN windows made."""
    s = Settings.model_validate(
        {
            "window": {"length": 10, "lateness": 0.0},
            "learning": {"windows": LEARN},
            "model": {"epochs": 2},
            "machines": {"pump-1": {"sensors": list(SENSORS)}},
            "state": {"dir": str(tmp_path)},
        }
    )
    pipeline, finetuner, metrics = wired_pipeline(s)
    readings = [Reading("pump-1", name, ts, v) for ts, values in ROWS for name, v in values.items()]
    assert pipeline.submit(Batch(0.0, readings))
    pipeline.cycle(timeout=0)
    job = finetuner.jobs.get_nowait()
    assert isinstance(job, FitRequest)
    return pipeline, finetuner, metrics, job


def test_one_big_batch_learns_from_its_start_and_scores_the_rest(tmp_path: Path) -> None:
    """A replay's batch holds more windows than learning takes: the model scores those past
    the training set that the backlog holds, and the pipeline counts the others."""
    pipeline, finetuner, metrics, job = one_big_batch(tmp_path)
    assert len(job.windows) == LEARN
    finetuner.handle(job)
    pipeline.cycle(timeout=0)
    scored = metrics.windows_scored.labels(machine="pump-1").get()
    unscored = metrics.windows_unscored.labels(machine="pump-1").get()
    assert (scored, unscored) == (LEARN, 51 - 2 * LEARN)


def test_a_failed_first_fit_learns_again_from_the_windows_that_waited(tmp_path: Path) -> None:
    """The windows that waited for a model that never came are the start of the next
    training set: neither learnt from nor scored before, they would be lost."""
    pipeline, finetuner, metrics, first = one_big_batch(tmp_path)
    pipeline.install(FitResult("pump-1", None, initial=True))
    pipeline.cycle(timeout=0)
    # Window j is rows j .. j + 9 (stride 1).
    sensors = pipeline.machines["pump-1"].sensors
    grid = np.array([[values[name] for name in sensors] for _, values in ROWS], np.float32)
    windows = [grid[j : j + 10] for j in range(51)]
    np.testing.assert_allclose(first.windows, windows[:LEARN])
    # The backlog held the newest LEARN of the 31 windows that waited: the next training
    # set at once. The 11 before them had no room, and are counted as before.
    second = finetuner.jobs.get_nowait()
    assert isinstance(second, FitRequest)
    np.testing.assert_allclose(second.windows, windows[51 - LEARN :])
    assert pipeline.machines["pump-1"].state == MachineState.LEARNING
    unscored = metrics.windows_unscored.labels(machine="pump-1").get()
    assert unscored == 51 - 2 * LEARN

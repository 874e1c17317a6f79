"""Fine-tuning absorbs slow drift of normal operation and never learns a fault.

The real pipeline and fine-tuner run in-process; fine-tune jobs are handled synchronously
between pipeline cycles, so event time alone decides when they run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs

from service.core.config import ModelSettings, Settings
from service.core.metrics import Metrics
from service.core.types import FloatArray, Reading
from service.learning.finetune import FineTuner, fit_new
from service.learning.store import ModelStore
from service.scoring.detector import Detector
from service.stream.arrivals import Batch
from service.stream.learning import FitResult, TuneRequest
from service.stream.pipeline import Pipeline
from tests.support import metric_value
from tests.synthetic import SENSORS, Fault, machine_rows
from tests.unit.wiring import wired_pipeline

MACHINE = "pump-3"


class Sink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if topic == "aemon/events":
            self.events.append(orjson.loads(payload))


def settings(finetune: bool, interval: float = 900.0, drift_detection: bool = True) -> Settings:
    return Settings.model_validate(
        {
            "window": {"length": 20, "lateness": 0.0},
            "learning": {"windows": 300},
            "discovery": {"period": 0.0},
            "machines": {MACHINE: {"sensors": ["current", "pressure", "temperature", "vibration"]}},
            "finetune": {
                "enabled": finetune,
                "interval": interval,
                "admit_every": 3,
                "min_windows": 100,
                "margin_windows": 60,
                "drift_detection": drift_detection,
            },
        }
    )


def run(
    s: Settings, rows: Iterable[tuple[float, dict[str, float]]], store: ModelStore | None = None
) -> tuple[Sink, Metrics]:
    sink = Sink()
    pipeline, finetuner, metrics = wired_pipeline(s, sink, store)
    chunk: list[Reading] = []
    for ts, values in rows:
        chunk += [Reading(MACHINE, sensor, ts, v) for sensor, v in values.items()]
        if len(chunk) >= 240:
            step(pipeline, finetuner, chunk)
            chunk = []
    step(pipeline, finetuner, chunk)
    return sink, metrics


def step(pipeline: Pipeline, finetuner: FineTuner, readings: list[Reading]) -> None:
    assert pipeline.submit(Batch(0.0, readings))
    pipeline.cycle(timeout=0)
    while not finetuner.jobs.empty():
        job = finetuner.jobs.get_nowait()
        assert job is not None
        finetuner.handle(job)
    pipeline.cycle(timeout=0)  # takes in what the fine-tuner produced


def runs(metrics: Metrics, outcome: str) -> float:
    text = metrics.registry
    from prometheus_client import generate_latest

    return metric_value(
        generate_latest(text).decode(),
        "aemon_finetune_runs_total",
        machine=MACHINE,
        outcome=outcome,
    )


@pytest.mark.parametrize("finetune", [False, True])
def test_slow_drift_alerts_without_finetuning_and_not_with_it(finetune: bool) -> None:
    # Fluid temperature +15 °C over four hours of event time (+10 °C raised alerts from a
    # model that learnt a few windows past learning.windows; of exactly 300, only from +12 °C).
    rows = machine_rows(0.0, 4 * 3600, seed=12, temperature_drift=15 / (4 * 3600))
    sink, metrics = run(settings(finetune), rows)
    raised = [e for e in sink.events if e["event"] == "raised"]
    if finetune:
        assert raised == []
        assert runs(metrics, "promoted") >= 3
    else:
        assert raised, "the drift should have raised an alert without fine-tuning"
        assert runs(metrics, "promoted") == 0


def test_persistent_fault_is_not_learnt() -> None:
    # Vibration tripled for two hours: eight fine-tune intervals of 15 minutes.
    fault = Fault(start=1800, end=1800 + 7200, sensor="vibration", factor=3.0)
    rows = machine_rows(0.0, 1800 + 7200, seed=12, fault=fault)
    sink, metrics = run(settings(True, interval=900.0), rows)
    raised = [e for e in sink.events if e["event"] == "raised"]
    resolved = [e for e in sink.events if e["event"] == "resolved"]
    assert len(raised) == 1
    assert resolved == [], "the alert must keep firing to the fault's end"
    text = generate(metrics)
    excluded = metric_value(text, "aemon_finetune_windows_excluded_total", machine=MACHINE)
    assert excluded >= 7000
    assert runs(metrics, "too_few_windows") + runs(metrics, "rejected_gate") >= 6
    # Runs are due every 900 s from the first score (~320 s): the one at ~1220 s and the one at
    # ~2120 s train on clean windows from before the fault; every later one has none.
    assert runs(metrics, "promoted") <= 2


def generate(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_fine_tunes_keep_the_operating_points_seen_while_learning() -> None:
    # Learnt at three loads; then 1000 s at the lowest alone, so the recent clean windows of
    # the fine-tune due at ~1220 s hold no 0.8 load at all; then the full cycle again. The
    # learning windows are the reservoir's first older normal windows: the fine-tuned model
    # still knows the loads of the learning period when they come back.
    learnt = machine_rows(0.0, 360, seed=13)
    low = machine_rows(360.0, 1000, seed=14, loads=(0.6,), temperature0=70.0)
    cycle = machine_rows(1360.0, 540, seed=15, temperature0=58.0)
    sink, metrics = run(settings(True, interval=900.0), [*learnt, *low, *cycle])
    assert runs(metrics, "promoted") == 1
    assert [e for e in sink.events if e["event"] == "raised"] == []


# -- drift on the scores ------------------------------------------------------------------
NO_INTERVAL = 36000.0  # ten hours: no fine-tune is due by the interval in these streams


def shifted(
    rows: Iterable[tuple[float, dict[str, float]]], at: float, sensor: str, offset: float
) -> Iterator[tuple[float, dict[str, float]]]:
    """The stream with `offset` added to `sensor` from `at` on: a new normal."""
    for ts, values in rows:
        yield ts, {**values, sensor: values[sensor] + offset} if ts >= at else values


@pytest.mark.parametrize("drift_detection", [True, False])
def test_a_rise_in_the_scores_requests_an_early_fine_tune(
    drift_detection: bool, tmp_path: Path
) -> None:
    # Temperature 4 °C higher from 20 minutes on (a recalibrated sensor, a warmer season):
    # scores rise, still under the threshold. (A slow sensor's held offsets are discounted,
    # `ModelSettings.offset_discount`: 2 °C no longer raises the scores enough to tell.)
    rows = shifted(machine_rows(0.0, 2400, seed=21), 1200, "temperature", 4.0)
    store = ModelStore(tmp_path)
    sink, metrics = run(settings(True, NO_INTERVAL, drift_detection), rows, store)
    drifts = metric_value(generate(metrics), "aemon_drift_events_total", machine=MACHINE)
    assert [e for e in sink.events if e["event"] == "raised"] == []
    facts = [v.facts for v in store.versions(MACHINE)]
    if drift_detection:
        assert drifts >= 1
        assert runs(metrics, "promoted") == 1
        assert facts[0]["reason"] == "learned"
        assert facts[1]["reason"] == "drift"
        assert facts[1]["parent"] == 1
        assert facts[1]["windows"] >= 100
    else:
        assert drifts == 0
        assert len(facts) == 1
        assert runs(metrics, "promoted") + runs(metrics, "too_few_windows") == 0


def test_the_rise_of_a_fault_requests_no_fine_tune() -> None:
    fault = Fault(start=900, end=1800, sensor="vibration", factor=3.0)
    with capture_logs() as logs:
        sink, metrics = run(
            settings(True, NO_INTERVAL), machine_rows(0.0, 2000, seed=21, fault=fault)
        )
    drifts = [e for e in logs if e["event"] == "score_drift"]
    assert [e["event"] for e in sink.events if e["event"] != "updated"] == ["raised", "resolved"]
    # Up when the fault starts (the alert fires first), down when it ends: counted, and
    # neither asks for a fine-tune.
    assert [d["level_after"] > d["level_before"] for d in drifts] == [True, False]
    assert not any(d["finetune_requested"] for d in drifts)
    assert metric_value(generate(metrics), "aemon_drift_events_total", machine=MACHINE) == 2
    assert runs(metrics, "promoted") + runs(metrics, "rejected_gate") == 0
    assert runs(metrics, "too_few_windows") == 0


# -- the threshold of a promoted model ----------------------------------------------------
def tune_job(current: Detector, seed: int) -> TuneRequest:
    windows = list(window_stack(machine_rows(0.0, 700, seed=seed), length=20)[::3])
    return TuneRequest(MACHINE, current, windows[:150], windows[150:], [], (20, len(SENSORS)))


def window_stack(rows: Iterable[tuple[float, dict[str, float]]], length: int) -> FloatArray:
    values = np.array([[v[s] for s in sorted(SENSORS)] for _, v in rows], np.float32)
    return np.stack([values[i : i + length] for i in range(len(values) - length + 1)])


def promote(tuner: FineTuner, installed: list[FitResult], job: TuneRequest) -> Detector:
    tuner.handle(job)
    detector = installed[-1].detector
    assert detector is not None, "the candidate should have passed the gate"
    return detector


def test_a_promotion_never_lowers_the_threshold_and_raises_it_in_bounded_steps() -> None:
    s = settings(True).model_copy(update={"model": ModelSettings(epochs=20)})
    installed: list[FitResult] = []
    tuner = FineTuner(s, Metrics(CollectorRegistry()), installed.append, None)
    current = fit_new(s, tuple(sorted(SENSORS)), window_stack(machine_rows(0.0, 400), 20))[0]
    calibrated = current.threshold
    # Far above what the candidate calibrates: it must not fall (halve, say) with a promotion.
    current.threshold = current.base_threshold = 10 * calibrated
    assert promote(tuner, installed, tune_job(current, 1)).threshold == 10 * calibrated
    # Far below: it rises by threshold_step per promotion, up to threshold_ceiling times
    # the first fit's threshold, and no further.
    current.threshold = current.base_threshold = calibrated / 100
    thresholds = []
    with capture_logs() as logs:
        for seed in range(2, 7):
            current = promote(tuner, installed, tune_job(current, seed))
            thresholds.append(current.threshold / (calibrated / 100))
    assert thresholds == pytest.approx([1.25, 1.25**2, 1.25**3, 2.0, 2.0])
    assert [e["event"] for e in logs].count("finetune_threshold_capped") == 2
    assert current.base_threshold == calibrated / 100


# -- learning beside the hot path ---------------------------------------------------------
def test_the_pipeline_hands_over_its_windows_and_the_learner_clones() -> None:
    """Little runs on the pipeline thread: a fine-tune request holds the scoring detector
    itself (no clone) and the buffer's windows copied out in one block, which later
    admissions do not change; the fine-tuner trains its own clone, so the scoring
    detector's weights never change."""
    s = settings(True, interval=300.0)
    pipeline, finetuner, _ = wired_pipeline(s)
    rows = iter(machine_rows(0.0, 1400))
    request = None
    while request is None:
        chunk = [Reading(MACHINE, k, ts, v) for ts, vs in islice(rows, 60) for k, v in vs.items()]
        assert chunk, "no fine-tune was requested"
        assert pipeline.submit(Batch(0.0, chunk))
        pipeline.cycle(timeout=0)
        while not finetuner.jobs.empty():
            job = finetuner.jobs.get_nowait()
            if isinstance(job, TuneRequest):
                request = job
            else:
                assert job is not None
                finetuner.handle(job)
                pipeline.cycle(timeout=0)
    runtime = pipeline.machines[MACHINE]
    assert request.current is runtime.detector
    kept = [*runtime.buffer.recent, *runtime.buffer.reservoir]
    assert request.train
    assert all(any(np.array_equal(w, k) for k in kept) for w in request.train)
    handed = [w.copy() for w in request.train]
    f = s.finetune
    for k in range(2 * (len(kept) + f.margin_windows) * f.admit_every):  # the ring written over
        runtime.buffer.observe(np.full_like(handed[0], -k), 0.0, 1.0, False)
    assert all(np.array_equal(w, h) for w, h in zip(request.train, handed, strict=True))
    before = [p.detach().clone() for p in request.current.model.parameters()]
    finetuner.handle(request)
    after = list(request.current.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def new_normal_settings(episode_factor: float) -> Settings:
    s = settings(True, interval=36_000.0, drift_detection=False)
    finetune = s.finetune.model_copy(
        update={"new_normal_after": 600.0, "episode_factor": episode_factor}
    )
    return s.model_copy(update={"finetune": finetune})


def new_normals(metrics: Metrics, outcome: str) -> float:
    text = generate(metrics)
    return metric_value(text, "aemon_new_normals_total", machine=MACHINE, outcome=outcome)


def test_a_state_that_settles_is_rebaselined_and_its_alert_resolves_as_new_normal() -> None:
    # At one load, pressure 30 % higher from 900 s on and steady: a new set-point. No
    # episode window binds the gate (episode_factor 1,000), so the re-baselining is promoted.
    fault = Fault(start=900, end=3000, sensor="pressure", factor=1.3)
    rows = machine_rows(0.0, 3000, seed=12, loads=(0.8,), fault=fault)
    with capture_logs() as logs:
        sink, metrics = run(new_normal_settings(episode_factor=1000.0), rows)
    raised = [e for e in sink.events if e["event"] == "raised"]
    resolved = [e for e in sink.events if e["event"] == "resolved"]
    assert len(raised) == 1
    assert raised[0]["started_at"] is not None
    assert [e["resolution"] for e in resolved] == ["new_normal"]
    settled = [e for e in logs if e["event"] == "new_normal_settled"]
    assert len(settled) == 1
    assert settled[0]["windows"] > 0
    gate = [e for e in logs if e["event"] == "finetune_gate" and e["reason"] == "new_normal"]
    assert len(gate) == 1
    assert gate[0]["passed"]
    assert new_normals(metrics, "promoted") == 1
    assert new_normals(metrics, "refused") == 0
    # Once re-baselined, the new set-point scores clean: no second alert.
    assert len([e for e in sink.events if e["event"] == "raised"]) == 1


def test_a_steady_fault_far_above_the_threshold_is_refused_and_fires_on() -> None:
    # Vibration tripled and held: steady, but its windows fill the gate's episodes.
    fault = Fault(start=900, end=3000, sensor="vibration", factor=3.0)
    rows = machine_rows(0.0, 3000, seed=12, loads=(0.8,), fault=fault)
    sink, metrics = run(new_normal_settings(episode_factor=2.0), rows)
    assert [e["event"] for e in sink.events if e["event"] in ("raised", "resolved")] == ["raised"]
    assert new_normals(metrics, "refused") >= 1
    assert new_normals(metrics, "promoted") == 0

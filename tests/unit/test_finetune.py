"""Fine-tuning absorbs slow drift of normal operation and never learns a fault.

The real pipeline and fine-tuner run in-process; fine-tune jobs are handled synchronously
between pipeline cycles, so event time alone decides when they run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from service.config import Settings
from service.finetune import FineTuner
from service.metrics import Metrics
from service.pipeline import Batch, Pipeline
from service.publish import Publisher
from service.rejections import RejectionLog
from service.types import Reading
from tests.support import metric_value
from tests.synthetic import Fault, machine_rows

MACHINE = "pump-3"


class Sink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if topic == "aemon/events":
            self.events.append(orjson.loads(payload))


def settings(finetune: bool, interval: float = 900.0) -> Settings:
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
            },
        }
    )


def run(s: Settings, rows: Iterable[tuple[float, dict[str, float]]]) -> tuple[Sink, Metrics]:
    metrics = Metrics(CollectorRegistry())
    sink = Sink()
    pipeline: Pipeline
    # Late binding: the pipeline is built after the fine-tuner it is given.
    finetuner = FineTuner(s, metrics, lambda result: pipeline.install(result), None)  # noqa: PLW0108
    pipeline = Pipeline(
        s, metrics, RejectionLog(metrics), Publisher(sink, "aemon", metrics), finetuner
    )
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
    # Fluid temperature +10 °C over four hours of event time.
    rows = machine_rows(0.0, 4 * 3600, seed=11, temperature_drift=10 / (4 * 3600))
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

"""A machine's counters exist from the moment it appears, and load failures are counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.core.config import ModelSettings, Settings
from service.core.metrics import FINETUNE_OUTCOMES, Metrics
from service.core.types import MachineState
from service.learning.store import ModelStore
from service.scoring.detector import Detector
from service.stream.pipeline import Pipeline
from tests.unit.wiring import wired_pipeline

SENSORS = ("current", "pressure")
COUNTERS = (
    "aemon_readings_received_total",
    "aemon_readings_accepted_total",
    "aemon_windows_scored_total",
    "aemon_alerts_raised_total",
    "aemon_finetune_windows_excluded_total",
    "aemon_drift_events_total",
    "aemon_model_load_failures_total",
)


def pipeline(settings: Settings, store: ModelStore | None) -> tuple[Pipeline, Metrics]:
    built, _, metrics = wired_pipeline(settings, store=store)
    return built, metrics


def samples(metrics: Metrics, machine: str) -> dict[tuple[str, str], float]:
    """`(sample name, outcome label or "")` -> value, for the machine's samples."""
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, s.labels.get("outcome", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("machine") == machine
    }


def test_a_declared_machine_has_every_counter_at_zero_before_any_reading() -> None:
    settings = Settings.model_validate({"machines": {"pump-1": {"sensors": list(SENSORS)}}})
    _, metrics = pipeline(settings, None)
    found = samples(metrics, "pump-1")
    for name in COUNTERS:
        assert found[(name, "")] == 0, name
    for outcome in FINETUNE_OUTCOMES:
        assert found[("aemon_finetune_runs_total", outcome)] == 0, outcome


def test_an_unusable_saved_version_is_counted_and_the_previous_one_used(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    for seed in (1, 2):
        detector = Detector.new(SENSORS, 10, ModelSettings(seed=seed))
        detector.mean, detector.std = np.zeros(2, np.float32), np.ones(2, np.float32)
        detector.threshold = float(seed)
        store.save("pump-1", detector, {"reason": "train"})
    (store.machine_dir("pump-1") / "2" / "weights.safetensors").write_bytes(b"not tensors")
    p, metrics = pipeline(Settings(), store)
    runtime = p.machines["pump-1"]
    assert runtime.state == MachineState.SCORING
    assert runtime.detector is not None
    assert (runtime.detector.version, runtime.detector.threshold) == (1, 1.0)
    found = samples(metrics, "pump-1")
    assert found[("aemon_model_load_failures_total", "")] == 1
    assert found[("aemon_model_version", "")] == 1

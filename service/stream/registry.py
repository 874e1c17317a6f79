"""A machine's runtime made when it is declared, found on disk or first heard of: its
saved model loaded (unless its sensors changed), its metrics' series created."""

from __future__ import annotations

import structlog

from service.core.config import Settings
from service.core.metrics import Metrics
from service.scoring.detector import Detector
from service.stream.learning import SavedModels
from service.stream.machines import MachineRuntime

log = structlog.get_logger(__name__)


def new_machine(
    name: str,
    sensors: tuple[str, ...] | None,
    period: float | None,
    settings: Settings,
    metrics: Metrics,
    store: SavedModels | None,
) -> MachineRuntime:
    metrics.add_machine(name)
    detector = _load_saved(name, metrics, store)
    if detector is not None and sensors is not None and detector.sensors != sensors:
        log.warning("saved_model_ignored", machine=name, reason="sensors changed in config")
        detector = None
    runtime = MachineRuntime(name, settings, sensors, period, detector)
    if detector is not None:
        metrics.model_version.labels(machine=name).set(detector.version)
        metrics.anomaly_threshold.labels(machine=name).set(detector.threshold)
    log.info(
        "machine_added",
        machine=name,
        sensors=runtime.sensors,
        state=runtime.state.value,
        model_version=detector.version if detector else None,
    )
    return runtime


def _load_saved(name: str, metrics: Metrics, store: SavedModels | None) -> Detector | None:
    if store is None:
        return None
    failures = store.unusable[name]
    detector = store.load_current(name)
    metrics.model_load_failures.labels(machine=name).inc(store.unusable[name] - failures)
    return detector

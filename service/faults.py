"""Test-only fault injection, armed by wrapping at wiring time: no production class
carries a test flag.

Read once at start from the environment (never from MQTT or HTTP, so nothing on the
network can trigger it): `AEMON_TEST_FAULT`, a comma-separated list of `pipeline` (the
pipeline thread raises on its first batch), `mqtt` (an exception escapes a paho callback,
which kills paho's network thread) and `stall` (the pipeline takes nothing from its queue,
so received readings stay unprocessed and unacknowledged).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

import structlog

from service.core.threads import InjectedFaultError
from service.stream.pipeline import Pipeline

log = structlog.get_logger(__name__)

FAULT_ENV = "AEMON_TEST_FAULT"

Callback = TypeVar("Callback", bound=Callable[..., None])


def armed_faults() -> frozenset[str]:
    faults = frozenset(f.strip() for f in os.environ.get(FAULT_ENV, "").split(",") if f.strip())
    if faults:
        log.warning("test_fault_armed", faults=sorted(faults))
    return faults


def arm_pipeline(pipeline: Pipeline, faults: frozenset[str]) -> None:
    """Replaces the pipeline's cycle: `pipeline` raises on the first batch it takes,
    `stall` waits out each cycle without taking anything."""
    if "pipeline" in faults:

        def failing_cycle(timeout: float) -> None:
            if pipeline.queue.take(timeout):
                raise InjectedFaultError(f"{FAULT_ENV}=pipeline")

        pipeline.cycle = failing_cycle  # type: ignore[method-assign]
    if "stall" in faults:

        def stalled_cycle(timeout: float) -> None:
            time.sleep(timeout)

        pipeline.cycle = stalled_cycle  # type: ignore[method-assign]


def arm_callback(callback: Callback, faults: frozenset[str]) -> Callback:
    """The MQTT message callback, raising on every message when `mqtt` is armed."""
    if "mqtt" not in faults:
        return callback

    def failing(*args: object, **kwargs: object) -> None:
        raise InjectedFaultError(f"{FAULT_ENV}=mqtt")

    return failing  # type: ignore[return-value]

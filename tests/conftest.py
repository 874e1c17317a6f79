"""Shared fixtures of every test (unit, integration and deploy)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import structlog


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest tests first: on `make test`'s two workers one of them runs beside the
    rest of the suite instead of after it."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(autouse=True)
def _structlog_as_it_was() -> Iterator[None]:
    """Each test leaves structlog as it found it. `capture_logs` marks structlog configured
    for good, and the simulators' CLIs then keep the default logger, which prints to stdout
    and mixes log lines into the `--stdout` data their tests read."""
    configured = structlog.is_configured()
    before = structlog.get_config()
    yield
    if configured:
        structlog.configure(**before)
    else:
        structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _heap_unfrozen() -> Iterator[None]:
    """A pipeline freezes the heap after its first cycle, as the daemon's process should
    (service.core.heap.freeze). In the test process that would keep every earlier test's
    cyclic garbage for good, and each freeze would take in the whole suite's objects."""
    yield
    gc.unfreeze()

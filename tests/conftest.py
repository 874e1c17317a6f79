"""Shared fixtures of every test (unit, integration and deploy)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


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

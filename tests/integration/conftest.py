from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Daemon, Mosquitto

# Small enough to learn in seconds, with the production code paths.
FAST_CONFIG: dict[str, dict[str, Any]] = {
    "window": {"length": 20, "stride": 1, "max_stale": 5.0, "lateness": 2.0},
    "learning": {"windows": 250},
    "discovery": {"period": 5.0},
    "model": {"epochs": 60},
    "alert": {"k": 3, "n": 5, "m": 10},
    "ingest": {"max_payload_bytes": 4096},
}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path).start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
def daemon(tmp_path: Path, broker: Mosquitto) -> Iterator[Daemon]:
    workdir = tmp_path / "daemon"
    workdir.mkdir()
    d = Daemon(workdir, broker.port, FAST_CONFIG).start()
    yield d
    d.stop()

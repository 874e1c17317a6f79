from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import FAST_CONFIG, Daemon, Mosquitto


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

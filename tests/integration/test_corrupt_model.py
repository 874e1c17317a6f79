"""A corrupt weights file: the daemon says which, falls back a version, and keeps scoring."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from service.core.config import load_settings
from service.learning.store import ModelStore
from service.offline.readers import History
from service.offline.train import train_machine
from tests.integration.conftest import FAST_CONFIG
from tests.support import Daemon, Mosquitto, Publisher, running, wait_until
from tests.synthetic import SENSORS, machine_rows

MACHINE = "pump-7"


def history(start: float, seconds: int, seed: int) -> History:
    rows = list(machine_rows(start, seconds, seed=seed))
    values = np.array([[v[s] for s in SENSORS] for _, v in rows], np.float32)
    ts = np.array([t for t, _ in rows])
    return History(Path(f"seed-{seed}.csv"), SENSORS, ts, values, np.zeros(len(rows), bool))


def test_corrupt_current_weights_fall_back_to_the_previous_version(
    tmp_path: Path, broker: Mosquitto
) -> None:
    daemon = Daemon(tmp_path, broker.port, FAST_CONFIG)
    settings = load_settings(daemon.config_path)
    # A few epochs: the versions need to load and differ, not to be good.
    quick = settings.model_copy(update={"model": settings.model.model_copy(update={"epochs": 5})})
    start = time.time() - 3000
    first = train_machine(MACHINE, [history(start, 400, seed=1)], quick, 20000)
    second = train_machine(MACHINE, [history(start, 400, seed=2)], quick, 20000)
    assert (first.version, second.version) == (1, 2)
    assert first.threshold != second.threshold
    store = ModelStore(settings.state.dir)
    weights = store.machine_dir(MACHINE) / "2" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern in the tensors
    weights.write_bytes(bytes(data))

    daemon.start()
    pub = Publisher(broker.port)
    with running(daemon, pub):
        [error] = daemon.log_events("model_version_unusable")
        assert (error["level"], error["machine"], error["version"]) == ("error", MACHINE, 2)
        assert error["path"] == str(weights)
        assert "SHA-256" in str(error["reason"])
        machine = daemon.machines()[MACHINE]
        assert (machine["state"], machine["model_version"]) == ("scoring", 1)
        assert machine["threshold"] == first.threshold
        assert daemon.metric("aemon_model_load_failures_total", machine=MACHINE) == 1
        assert daemon.metric("aemon_model_version", machine=MACHINE) == 1
        last = start + 519
        for ts, values in machine_rows(start + 400, 120, seed=3):
            pub.send(f"plant/{MACHINE}", {"ts": ts, "values": values})
        pub.flush()
        wait_until(
            lambda: (daemon.machines()[MACHINE]["scored_until"] or 0) >= last - 3,
            30,
            "the readings scored by version 1",
        )
        assert daemon.metric("aemon_windows_scored_total", machine=MACHINE) >= 90
        assert daemon.healthy()

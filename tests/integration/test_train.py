"""`aemon train` bootstraps a machine from history: the daemon scores it without learning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from service.offline.readers import read_skab
from tests.integration.conftest import FAST_CONFIG
from tests.support import REPO, Daemon, Mosquitto, Publisher, running, wait_until

SKAB_FILE = REPO / "tests" / "data" / "skab" / "valve1" / "0.csv"
MACHINE = "valve1"


def test_a_trained_machine_is_scored_from_the_first_reading(
    tmp_path: Path, broker: Mosquitto
) -> None:
    # Fewer epochs than the daemon's learning uses: the test is about the bootstrap.
    daemon = Daemon(tmp_path, broker.port, {**FAST_CONFIG, "model": {"epochs": 15}})
    command = ["train", "--config", str(daemon.config_path), "--machine", MACHINE]
    trained = subprocess.run(
        [sys.executable, "-m", "service", *command, str(SKAB_FILE)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.startswith(f"{MACHINE}: version 1, ")
    daemon.start()
    pub = Publisher(broker.port)
    with running(daemon, pub):
        machine = daemon.machines()[MACHINE]
        assert (machine["state"], machine["model_version"]) == ("scoring", 1)
        assert machine["learning_windows"] == 0
        assert daemon.metric("aemon_machine_state", machine=MACHINE, state="scoring") == 1
        history = read_skab(SKAB_FILE)
        for ts, row in zip(history.ts, history.values, strict=True):
            values = dict(zip(history.sensors, (float(v) for v in row), strict=True))
            pub.send(f"plant/{MACHINE}", {"ts": float(ts), "values": values})
        pub.flush()
        last = float(history.ts[-1])
        wait_until(
            lambda: (daemon.machines()[MACHINE]["scored_until"] or 0) >= last - 3,
            30,
            "every window scored",
        )
        # Scored from the first complete window on, by the trained model: no learning.
        scored = daemon.metric("aemon_windows_scored_total", machine=MACHINE)
        assert scored >= len(history.ts) - FAST_CONFIG["window"]["length"] - 3
        assert daemon.machines()[MACHINE]["model_version"] == 1
        assert daemon.metric("aemon_finetune_runs_total", machine=MACHINE, outcome="initial") == 0

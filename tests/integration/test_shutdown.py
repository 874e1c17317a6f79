"""SIGTERM under load: an orderly shutdown, exit 0, and `offline` on the status topic."""

from __future__ import annotations

import signal
import threading
import time

from tests.support import Daemon, Mosquitto, Publisher, Subscriber, running, wait_until
from tests.synthetic import machine_rows


def test_sigterm_under_load_exits_zero_and_says_offline(daemon: Daemon, broker: Mosquitto) -> None:
    pub = Publisher(broker.port)
    sub = Subscriber(broker.port, ["aemon/status"])
    stop = threading.Event()

    def load() -> None:
        machines = [f"m{i}" for i in range(20)]
        for ts, values in machine_rows(time.time() - 80_000, 70_000, seed=5):
            if stop.is_set():
                return
            for machine in machines:
                pub.send(f"plant/{machine}", {"ts": ts, "values": values}, qos=0)

    with running(pub, sub):
        wait_until(lambda: sub.on("aemon/status") == [b"online"], 10, "online status")
        publisher = threading.Thread(target=load, daemon=True)
        publisher.start()
        wait_until(
            lambda: daemon.metric("aemon_readings_accepted_total") > 20_000, 60, "load to flow"
        )
        sent_at = time.monotonic()
        code = daemon.stop(signal.SIGTERM, timeout=15)
        elapsed = time.monotonic() - sent_at
        stop.set()
        publisher.join(10)
        assert code == 0
        assert elapsed < 10, f"shutdown took {elapsed:.1f} s"
        wait_until(lambda: sub.on("aemon/status")[-1:] == [b"offline"], 10, "offline status")
        assert "aemon_stopped" in daemon.logs()

"""Bad input is rejected, counted under its reason and logged, and scoring goes on."""

from __future__ import annotations

import math
import time

import orjson

from tests.support import Daemon, Mosquitto, Publisher, running, wait_until
from tests.synthetic import machine_rows

MACHINE = "fan-2"


def test_bad_input_is_counted_by_reason_while_scoring_goes_on(
    daemon: Daemon, broker: Mosquitto
) -> None:
    pub = Publisher(broker.port)
    with running(pub):
        start = time.time() - 2000
        rows = list(machine_rows(start, 400, seed=4))
        for ts, values in rows[:320]:
            pub.send(f"plant/{MACHINE}", {"ts": ts, "values": values})
        pub.flush()
        wait_until(
            lambda: daemon.machines().get(MACHINE, {}).get("state") == "scoring", 60, "model fit"
        )
        scored_before = daemon.metric("aemon_windows_scored_total", machine=MACHINE)

        bad = {
            "malformed": (f"plant/{MACHINE}", b'{"ts": 1, "values": {'),
            "non_finite": (f"plant/{MACHINE}/current", b"NaN"),
            "schema": (f"plant/{MACHINE}/current", b'{"value": "high"}'),
            "unknown_topic": ("plant//current", b"1.0"),
            "too_large": (
                f"plant/{MACHINE}",
                b'{"values": {"current": 1}, "pad": "' + b"x" * 5000 + b'"}',
            ),
            "future": (
                f"plant/{MACHINE}/current",
                orjson.dumps({"ts": time.time() + 86400, "value": 1.0}),
            ),
            "late": (f"plant/{MACHINE}/current", orjson.dumps({"ts": start + 10, "value": 1.0})),
            "unknown_sensor": (
                f"plant/{MACHINE}/humidity",
                orjson.dumps({"ts": rows[320][0], "value": 1.0}),
            ),
        }
        for topic, payload in bad.values():
            pub.send(topic, payload)
        for ts, values in rows[320:]:
            pub.send(f"plant/{MACHINE}", {"ts": ts, "values": values})
        pub.flush()

        def all_counted() -> bool:
            return all(
                daemon.metric("aemon_readings_rejected_total", reason=reason) >= 1 for reason in bad
            )

        wait_until(all_counted, 30, "every bad input counted under its reason")
        wait_until(
            lambda: (
                daemon.metric("aemon_windows_scored_total", machine=MACHINE) >= scored_before + 70
            ),
            30,
            "scoring to go on after bad input",
        )
        text = daemon.metrics()
        for name in (
            "aemon_readings_received_total",
            "aemon_anomaly_score",
            "aemon_anomaly_threshold",
        ):
            assert f'{name}{{machine="{MACHINE}"}}' in text
        # No `_created` sample per counter: a third of a plant's scrape, and series of its own.
        assert "_created" not in text
        threshold = daemon.metric("aemon_anomaly_threshold", machine=MACHINE)
        assert math.isfinite(threshold)
        assert threshold > 0
        received = daemon.metric("aemon_readings_received_total")
        accepted = daemon.metric("aemon_readings_accepted_total")
        rejected = daemon.metric("aemon_readings_rejected_total")
        assert received == accepted + rejected
        logged = daemon.logs()
        for reason in bad:
            assert f'"reason":"{reason}"' in logged.replace(" ", ""), reason
        assert daemon.healthy()

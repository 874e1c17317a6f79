"""`make demo`: a broker, the daemon and a publisher of normal readings then a fault.

Everything runs on 127.0.0.1 on free ports, and every process started here is stopped by
its own PID on exit (Ctrl-C, or after DEMO_SECONDS).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

MACHINE = "pump-1"
LEARN_SECONDS = 420
FAULT_AT, FAULT_END = 540, 660


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def mosquitto_binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise SystemExit("mosquitto is not installed: run `make install`")


def readings(start: float, seconds: int) -> Iterator[tuple[float, dict[str, float]]]:
    """A pump whose sensors follow its load; vibration triples during the fault."""
    rng = np.random.default_rng(7)
    temperature = 58.0
    for i in range(seconds):
        load = (0.6, 0.8, 1.0)[(i // 60) % 3]
        temperature += (40 + 30 * load - temperature) / 30
        values = {
            "current": 10 * load + rng.normal(0, 0.1),
            "pressure": 3 * load**2 + rng.normal(0, 0.03),
            "temperature": temperature + rng.normal(0, 0.2),
            "vibration": (0.5 + 0.3 * load + rng.normal(0, 0.02))
            * (3 if FAULT_AT <= i < FAULT_END else 1),
        }
        yield start + i, values


def print_alert(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
    doc = orjson.loads(message.payload)
    top = ", ".join(f"{s['sensor']} {s['share']:.0%}" for s in doc["top_sensors"])
    print(
        f"ALERT {doc['event']:<8} {doc['machine']}  state={doc['state']}  "
        f"score={doc['score']:.3f} threshold={doc['threshold']:.3f}  top: {top}  "
        f"at {doc['updated_at']}  id={doc['alert_id'][:8]}",
        flush=True,
    )


def main() -> int:
    seconds = float(os.environ.get("DEMO_SECONDS", "120"))
    workdir = Path(tempfile.mkdtemp(prefix="aemon-demo-"))
    broker_port, http_port = free_port(), free_port()
    (workdir / "mosquitto.conf").write_text(
        f"listener {broker_port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"
    )
    (workdir / "aemon.toml").write_text(
        f'[mqtt]\nport = {broker_port}\n[http]\nhost = "127.0.0.1"\nport = {http_port}\n'
        f'[state]\ndir = "{workdir / "state"}"\n[learning]\nwindows = 300\n'
        '[log]\nformat = "json"\n'
    )
    procs: list[subprocess.Popen[bytes]] = []
    log = (workdir / "aemon.log").open("ab")
    try:
        procs.append(
            subprocess.Popen(
                [mosquitto_binary(), "-c", str(workdir / "mosquitto.conf")], stdout=log, stderr=log
            )
        )
        wait_for_port(broker_port, 10)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "service", "run", "--config", str(workdir / "aemon.toml")],
                stdout=log,
                stderr=log,
            )
        )
        wait_for_port(http_port, 60)
        print(f"broker   mqtt://127.0.0.1:{broker_port}")
        print(f"metrics  http://127.0.0.1:{http_port}/metrics")
        print(f"status   http://127.0.0.1:{http_port}/  (/healthz /readyz /api/machines)")
        print(f"logs     {workdir / 'aemon.log'}")
        run_publisher(broker_port, seconds)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        print("demo stopped; every process it started has exited")
    return 0


def run_publisher(port: int, seconds: float) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = print_alert
    client.on_connect = lambda c, *a: c.subscribe("aemon/events", qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    stop_at = time.monotonic() + seconds
    # History is sent at 20x real time with its own timestamps, so the model is learnt in
    # about 20 s and the fault arrives about 30 s later.
    start = time.time() - 900
    print(
        f"publishing {MACHINE}: normal load changes, vibration x3 from +{FAULT_AT} s to "
        f"+{FAULT_END} s of event time (sent at 20x)"
    )
    for ts, values in readings(start, 900):
        if time.monotonic() > stop_at:
            break
        client.publish(f"plant/{MACHINE}", orjson.dumps({"ts": ts, "values": values}), qos=1)
        time.sleep(0.05)
    # Let the last alerts arrive before the daemon is stopped.
    time.sleep(max(0.0, min(10.0, stop_at - time.monotonic())))
    client.loop_stop()
    client.disconnect()


if __name__ == "__main__":
    raise SystemExit(main())

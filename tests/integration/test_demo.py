"""`make demo` without a terminal, cut short by DEMO_SECONDS: the faults the plant injected by
then are alerted on their own machines inside their fault windows, the operating-point
changes of every machine raise no alert, Prometheus' AemonMachineAnomalous fires only for
faulty machines, and every process the demo started has exited when it returns.

The demo starts its own Mosquitto, daemon, Prometheus and plant on free loopback ports and
writes their PIDs (with start times, so a reused PID is not mistaken for them) to
`pids.json`; the test stops the demo by its PID if it overruns, and anything it left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from simulators.demo.run import HOLD_MAX_S
from simulators.stack import REPO, start_ticks, terminate

pytestmark = pytest.mark.integration

# Wall seconds of the plant's run (start-up and the hold while first models are fitted are
# not counted): at the demo's x100, event time 9000 s, 600 s past the fourth fault's start
# (simulators/demo/scenario.py); the fifth has just begun and the sixth is not reached.
DEMO_SECONDS = 90
# The hold, settling (at most 20 s) and stopping the children by PID.
OVERRUN_S = HOLD_MAX_S + 60
CHILDREN = {"mosquitto", "daemon", "prometheus", "plant"}


def run_demo(workdir: Path, log: Path) -> tuple[int | None, str]:
    env = {
        **os.environ,
        "DEMO_SECONDS": str(DEMO_SECONDS),
        "DEMO_DIR": str(workdir),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "simulators.demo"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    try:
        code: int | None = proc.wait(DEMO_SECONDS + OVERRUN_S)
    except subprocess.TimeoutExpired:
        terminate(proc, 30)  # SIGTERM: the demo stops its children, as on Ctrl-C
        code = None
    return code, log.read_text(errors="replace")


def running_children(workdir: Path) -> dict[str, int]:
    pids: dict[str, list[int]] = orjson.loads((workdir / "pids.json").read_bytes())
    return {name: pid for name, (pid, ticks) in pids.items() if start_ticks(pid) == ticks}


def kill_leftovers(workdir: Path) -> None:
    with contextlib.suppress(OSError):
        for pid in running_children(workdir).values():
            os.kill(pid, signal.SIGKILL)


def duration(fault: dict[str, Any]) -> float:
    return float(fault["end"] - fault["start"])


@pytest.mark.long
def test_demo_alerts_each_fault_on_its_machine_and_leaves_no_process(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    try:
        code, output = run_demo(workdir, tmp_path / "demo.out")
        left = running_children(workdir)
    finally:
        kill_leftovers(workdir)
    assert code == 0, f"demo exit {code}:\n{output[-4000:]}"
    assert left == {}, f"still running after the demo returned: {left}"
    assert set(orjson.loads((workdir / "pids.json").read_bytes())) == CHILDREN
    report: dict[str, Any] = orjson.loads((workdir / "report.json").read_bytes())

    # Raised inside the fault window: the grace after it is not needed for these kinds.
    alerted = [f for f in report["faults"] if f["detected"] and f["delay_s"] < duration(f)]
    machines = {f["machine"] for f in alerted}
    assert len({f["fault"] for f in alerted}) >= 4, report["faults"]
    assert len(machines) == len(alerted), "one fault per machine"
    assert report["false_alerts"] == [], report["false_alerts"]
    assert report["prometheus_fired"], "AemonMachineAnomalous never fired in Prometheus"
    assert set(report["prometheus_fired"]) <= machines, report["prometheus_fired"]

    assert "\x1b[" not in output, "headless output must be plain text"
    for where in ("/metrics", "/healthz", "/readyz", "status page", "prometheus"):
        assert where in output
    assert "alert_raised" in output

"""A real Prometheus scrapes a live daemon: every dashboard query returns a series, the machine
variable lists the machine, and AemonMachineAnomalous fires for a faulty machine.

Everything runs on 127.0.0.1 with free ports and temporary directories: a Mosquitto of the
test's own, the daemon (`python -m service run`), and Debian's `prometheus` scraping it every
second with the alert rules evaluated every second. The rules are loaded from a test copy in
which every `for:` is 1s (the real 2m would make the test wait minutes); expressions, labels
and annotations are the real ones. Every process is stopped by its own PID; every wait polls
with a deadline.

When strace is installed, the daemon runs under it, and the last test checks that every
system call the daemon made, from its first import to its exit, is one the systemd unit's
SystemCallFilter= allows.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from simulators.stack import RULES, Prometheus, with_for
from tests.support import (
    FAST_CONFIG,
    REPO,
    Daemon,
    Mosquitto,
    Publisher,
    Subscriber,
    find_binary,
    wait_until,
)
from tests.synthetic import Fault, machine_rows

DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "aemon.json"
UNIT = DEPLOY / "systemd" / "aemon.service"
MACHINE = "pump-7"
ALERT_TOPIC = f"aemon/alerts/{MACHINE}"
LEARN_ROWS = 320
FAULT_ROWS = 60
# Grafana's variables, as a dashboard viewer picking the machine would have them.
VARIABLES = {"$machine": MACHINE, "$__rate_interval": "1m"}


class TracedDaemon(Daemon):
    """The daemon, under `strace -f` when strace exists. `self.proc` is then strace, and
    `self.target` the daemon itself, which is the process signalled."""

    def __init__(self, workdir: Path, broker_port: int) -> None:
        super().__init__(workdir, broker_port, FAST_CONFIG)
        self.strace = shutil.which("strace")
        self.trace = workdir / "strace.txt"
        self.target: int | None = None

    def start(self, env: dict[str, str] | None = None, ready: bool = True) -> TracedDaemon:
        command = [sys.executable, "-m", "service", "run", "--config", str(self.config_path)]
        if self.strace:
            command = [self.strace, "-f", "-qq", "-o", str(self.trace), "--", *command]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=log, cwd=REPO)
        self.target = wait_until(self._target_pid, 10, "the daemon's process")
        self.wait_started(ready, timeout=90)
        return self

    def _target_pid(self) -> int | None:
        """strace's child that runs the daemon's Python. Not simply its first child: strace
        forks short-lived children of its own at start to probe what ptrace can do, and a
        signal sent to one of those never reaches the daemon (which then outlived strace's
        kill, untraced, when this took the first child)."""
        assert self.proc is not None
        if not self.strace:
            return self.proc.pid
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            for pid in map(int, children.read_text().split()):
                if _argv(pid)[:1] == [sys.executable]:
                    return pid
        return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signals the daemon and waits for strace to end with it; if it does not, both
        are killed by PID (no process outlives the test) and the failure says which PID
        was signalled and what it was."""
        assert self.proc is not None
        target = self.target or self._target_pid()
        if self.proc.poll() is None and target is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            what = _cmdline(target)
            for pid in [p for p in (target, self.proc.pid) if p is not None]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait(10)
            raise AssertionError(
                f"signal {sig} to pid {target} ({what}) under strace pid {self.proc.pid}: "
                f"still running after {timeout} s"
            ) from None


def _argv(pid: int | None) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def _cmdline(pid: int | None) -> str:
    return " ".join(_argv(pid))[:200] or "gone"


@dataclass
class Stack:
    broker: Mosquitto
    daemon: TracedDaemon
    prometheus: Prometheus


def send_rows(pub: Publisher, rows: Iterator[tuple[float, dict[str, float]]], n: int) -> None:
    for ts, values in itertools.islice(rows, n):
        pub.send(f"plant/{MACHINE}", {"ts": ts, "values": values})
    pub.flush()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A machine learnt, then faulty until its alert fires on MQTT; Prometheus scraping."""
    root = tmp_path_factory.mktemp("live")
    (root / "daemon").mkdir()
    started: list[Any] = []
    try:
        broker = Mosquitto(root).start()
        started.append(broker)
        daemon = TracedDaemon(root / "daemon", broker.port)
        # Prometheus first: it then has samples from the daemon's first second on.
        prometheus = Prometheus(root, daemon.http_port, with_for(RULES.read_text(), "1s")).start()
        started.append(prometheus)
        started.append(daemon)
        daemon.start()
        sub = Subscriber(broker.port, [ALERT_TOPIC])
        pub = Publisher(broker.port)
        try:
            fault = Fault(LEARN_ROWS, LEARN_ROWS + FAULT_ROWS, "vibration", factor=3.0)
            rows = machine_rows(time.time() - 2000, LEARN_ROWS + FAULT_ROWS, seed=1, fault=fault)
            send_rows(pub, rows, LEARN_ROWS)
            # Under strace -f a first fit took 10 - 70 s on a loaded 2-core box.
            wait_until(
                lambda: daemon.machines().get(MACHINE, {}).get("state") == "scoring",
                180,
                "the machine's first model",
            )
            # A rejected reading, so the rejections panel has a series; then the fault, and no
            # normal rows after it: the alert keeps firing while Prometheus looks.
            pub.send(f"plant/{MACHINE}", b"{not json")
            send_rows(pub, rows, FAULT_ROWS)
            wait_until(
                lambda: [m for m in sub.json_on(ALERT_TOPIC) if m["state"] == "firing"],
                30,
                f"a firing alert on {ALERT_TOPIC}",
            )
            wait_until(daemon.ready, 30, "the daemon's /readyz")
        finally:
            pub.close()
            sub.close()
        yield Stack(broker, daemon, prometheus)
    finally:
        for thing in reversed(started):
            with contextlib.suppress(Exception):
                thing.stop()


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title and refId, expr with the variables substituted) for every query."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    out = []
    for panel in panels:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"unsubstituted variable in {expr}"
            out.append((f"{panel['title']} ({target['refId']})", expr))
    return out


def test_every_dashboard_query_returns_a_series(stack: Stack) -> None:
    queries = dashboard_queries()
    assert len(queries) > 10
    waiting = dict(queries)
    deadline = time.monotonic() + 30
    while waiting and time.monotonic() < deadline:
        waiting = {name: e for name, e in waiting.items() if not stack.prometheus.query(e)}
        if waiting:
            time.sleep(0.5)
    assert not waiting, f"queries without a series after 30 s: {json.dumps(waiting, indent=1)}"


def test_machine_variable_lists_the_machine(stack: Stack) -> None:
    values = stack.prometheus.api(
        "/api/v1/label/machine/values", **{"match[]": "aemon_anomaly_score"}
    )
    assert MACHINE in values


def test_machine_anomalous_alert_fires_and_the_daemon_is_not_reported_down(stack: Stack) -> None:
    def firing(name: str) -> list[dict[str, Any]]:
        return [
            a
            for a in stack.prometheus.alerts()
            if a["labels"]["alertname"] == name and a["state"] == "firing"
        ]

    (alert,) = wait_until(lambda: firing("AemonMachineAnomalous"), 30, "AemonMachineAnomalous")
    assert alert["labels"]["machine"] == MACHINE
    assert alert["labels"]["severity"] == "warning"
    assert f"Machine {MACHINE} behaves anomalously" == alert["annotations"]["summary"]
    assert f"aemon/alerts/{MACHINE}" in alert["annotations"]["runbook"]
    # Alive, connected and keeping up: these must have resolved since the start.
    for healthy in ("AemonDown", "AemonBrokerDisconnected", "AemonOverloaded", "AemonNotReady"):
        wait_until(lambda name=healthy: not firing(name), 10, f"{healthy} not firing")


# -- system calls ---------------------------------------------------------------------------


def syscall_groups() -> dict[str, list[str]]:
    """systemd's named groups (@system-service, ...) and their members, from systemd-analyze."""
    listing = subprocess.run(
        [find_binary("systemd-analyze"), "syscall-filter"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in listing.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if not line[0].isspace():
            current = groups.setdefault(entry, [])
        else:
            current.append(entry)
    return groups


def expand(entries: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for entry in entries:
        out |= expand(groups[entry], groups) if entry.startswith("@") else {entry}
    return out


def allowed_by_unit() -> set[str]:
    """The unit's SystemCallFilter= lines: the first is an allow list, `~` lines deny."""
    groups = syscall_groups()
    lines = re.findall(r"^SystemCallFilter=(.*)$", UNIT.read_text(), re.M)
    assert lines
    assert not lines[0].startswith("~"), lines
    allowed: set[str] = set()
    for line in lines:
        deny = line.startswith("~")
        names = expand(line.removeprefix("~").split(), groups)
        allowed = allowed - names if deny else allowed | names
    return allowed


def test_daemon_makes_only_system_calls_the_unit_allows(stack: Stack) -> None:
    """Runs last in this module: it stops the daemon to have the whole trace, shutdown
    included."""
    if not stack.daemon.strace:
        pytest.skip("strace is not installed: the daemon ran untraced")
    assert stack.daemon.stop() == 0, stack.daemon.logs()[-3000:]
    used = set(re.findall(r"^\d+\s+([a-z0-9_]+)\(", stack.daemon.trace.read_text(), re.M))
    assert {"openat", "connect", "bind", "execve"} <= used  # the trace is complete
    refused = used - allowed_by_unit()
    assert not refused, f"SystemCallFilter= would refuse: {sorted(refused)}"

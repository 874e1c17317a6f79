"""`make demo`: Mosquitto, the daemon, Prometheus and the plant simulator, watched live.

Every child runs on 127.0.0.1 on a free port with its own config in the demo's directory,
in a process group of its own, and is stopped by its PID, newest first, however the demo
ends: the plant's schedule is over, `DEMO_SECONDS` have passed, Ctrl-C, SIGTERM, or an
error. `pids.json` in the directory names each child (PID and start time) once it runs.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from simulators.clients import wait_for
from simulators.demo.episodes import Report, build_report
from simulators.demo.scenario import Scenario, faults_toml
from simulators.demo.view import View
from simulators.demo.watch import PROMETHEUS_ALERT, RunState, Watch
from simulators.machine import default_machines
from simulators.publish import KEEPALIVE_S
from simulators.stack import (
    RULES,
    Daemon,
    Mosquitto,
    Prometheus,
    spawn,
    start_ticks,
    terminate,
    with_for,
)

log = structlog.get_logger("simulators.demo")
POLL_S = 0.5
# Plant seconds per wall second: the schedule in about two minutes. (The six first fits,
# ~3.5 s each on 2 cores, once raced the faults at this speed; the plant is now held while
# they run: PlantHold.)
DEFAULT_SPEED = 100.0
SETTLE_TIMEOUT_S = 20.0
# The longest the plant is held while first models are fitted, inside the 1.5 keepalives
# after which the broker would drop its silent connection.
HOLD_MAX_S = 1.5 * KEEPALIVE_S - 10.0
PAYLOADS = ("per-machine", "per-sensor", "sparkplug")


def sparkplug_config(scenario: Scenario) -> dict[str, Any]:
    """The daemon reads the plant's edge node, each device named as the machine it is."""
    names = [m.name for m in default_machines(scenario.machines)]
    machines = {f"plant/edge/{name}": name for name in names}
    return {"enabled": True, "groups": ["plant"], "machines": machines}


@dataclass(frozen=True)
class Options:
    """From the environment: `DEMO_SECONDS` (wall seconds of the plant's run, start-up not
    counted; default: the whole schedule),
    `DEMO_SPEED` (plant seconds per wall second, 100), `DEMO_GRACE` (event seconds after a
    fault in which an alert is still that fault's, 600: motors and oil cool with time
    constants of 3 to 5 minutes, so an overheated machine is back to normal after about
    ten), `DEMO_DIR` (the working directory, default a new temporary one), `DEMO_REPORT`
    (one more path for the JSON report), `DEMO_SCREEN` (a path for the run's busiest frame
    of the live view, as text), `DEMO_PAYLOAD` (how the plant publishes: `per-machine`,
    `per-sensor` or `sparkplug`, Sparkplug B as one edge node of group `plant`)."""

    seconds: float  # math.inf: the whole schedule
    speed: float
    grace: float
    workdir: Path
    report: Path | None
    screen: Path | None
    payload: str = "per-machine"

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Options:
        """Raises ValueError naming a variable that is not a number in its range.

        >>> Options.from_env({"DEMO_SPEED": "0", "DEMO_DIR": "."})
        Traceback (most recent call last):
        ValueError: DEMO_SPEED must be a number > 0, not '0'
        """
        workdir = env.get("DEMO_DIR") or tempfile.mkdtemp(prefix="aemon-demo-")
        return cls(
            _number(env, "DEMO_SECONDS", math.inf, 0.0),
            _number(env, "DEMO_SPEED", DEFAULT_SPEED, 0.0),
            _number(env, "DEMO_GRACE", 600.0, 0.0, inclusive=True),
            Path(workdir),
            Path(env["DEMO_REPORT"]) if env.get("DEMO_REPORT") else None,
            Path(env["DEMO_SCREEN"]) if env.get("DEMO_SCREEN") else None,
            _payload(env.get("DEMO_PAYLOAD") or "per-machine"),
        )


def _payload(text: str) -> str:
    if text not in PAYLOADS:
        raise ValueError(f"DEMO_PAYLOAD must be one of {', '.join(PAYLOADS)}, not {text!r}")
    return text


def _number(
    env: dict[str, str], name: str, default: float, low: float, *, inclusive: bool = False
) -> float:
    text = env.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value >= low if inclusive else value > low) or math.isinf(value):
        bound = f"{'>=' if inclusive else '>'} {low:g}"
        raise ValueError(f"{name} must be a number {bound}, not {text!r}")
    return value


class Children:
    """The processes started so far, written to `pids.json` as each starts, and stopped by
    PID newest first (the plant, Prometheus, the daemon, then the broker)."""

    def __init__(self, pids_file: Path) -> None:
        self.pids_file = pids_file
        self.procs: list[tuple[str, subprocess.Popen[bytes], float]] = []
        self.before_last: list[Callable[[], None]] = []  # run before the broker stops

    def add(self, name: str, proc: subprocess.Popen[bytes] | None, timeout: float = 15) -> None:
        if proc is None:
            return
        self.procs.append((name, proc, timeout))
        pids = {n: [p.pid, start_ticks(p.pid)] for n, p, _ in self.procs}
        self.pids_file.write_bytes(orjson.dumps(pids))

    def stop(self) -> None:
        for i, (_, proc, timeout) in enumerate(reversed(self.procs)):
            if i == len(self.procs) - 1:
                for hook in self.before_last:
                    hook()
            terminate(proc, timeout)


@dataclass
class Stack:
    broker: Mosquitto
    daemon: Daemon
    prometheus: Prometheus
    watch: Watch
    plant: subprocess.Popen[bytes]
    start_ts: float  # event time of the plant's first reading

    def addresses(self) -> dict[str, str]:
        return {
            "status page": self.daemon.url("/"),
            "metrics": self.daemon.url("/metrics"),
            "healthz": self.daemon.url("/healthz"),
            "readyz": self.daemon.url("/readyz"),
            "prometheus": self.prometheus.url("/alerts"),
            "broker": f"mqtt://127.0.0.1:{self.broker.port}",
            "logs": str(self.daemon.workdir.parent),
        }


class Demo:
    def __init__(self, options: Options, scenario: Scenario) -> None:
        self.options, self.scenario = options, scenario
        self.workdir = options.workdir
        self.children = Children(self.workdir / "pids.json")
        self.stack: Stack | None = None
        self.started = time.monotonic()

    def wall_s(self) -> float:
        return time.monotonic() - self.started

    # -- starting -----------------------------------------------------------------------
    def start(self) -> Stack:
        broker = Mosquitto(self.workdir)
        try:
            broker.start()
        finally:
            self.children.add("mosquitto", broker.proc)
        config = self.scenario.config
        if self.options.payload == "sparkplug":
            config = {**config, "sparkplug": sparkplug_config(self.scenario)}
        daemon = Daemon(_mkdir(self.workdir / "daemon"), broker.port, config)
        try:
            daemon.start()
        finally:
            self.children.add("daemon", daemon.proc, 30)
        anomalous_for = self.scenario.anomalous_for(self.options.speed)
        rules = with_for(RULES.read_text(), anomalous_for, {PROMETHEUS_ALERT})
        prometheus = Prometheus(_mkdir(self.workdir / "prometheus"), daemon.http_port, rules)
        try:
            prometheus.start()
        finally:
            self.children.add("prometheus", prometheus.proc, 30)
        watch = Watch(broker.port, daemon, prometheus)
        self.children.before_last.append(watch.close)
        start_ts, plant = self._start_plant(broker.port)
        self.stack = Stack(broker, daemon, prometheus, watch, plant, start_ts)
        return self.stack

    def _start_plant(self, port: int) -> tuple[float, subprocess.Popen[bytes]]:
        s, speed = self.scenario, self.options.speed
        faults = self.workdir / "faults.toml"
        faults.write_text(faults_toml(s.faults))
        # The last reading is due now: event time never runs ahead of the wall clock.
        start_ts = float(math.floor(time.time() - s.duration_s + s.wall_s(speed)))
        command = [
            sys.executable, "-m", "simulators.plant",
            "--machines", str(s.machines), "--seed", str(s.seed),
            "--period", f"{s.period_s:g}", "--speed", f"{speed:g}",
            "--duration", f"{s.duration_s:g}", "--start", f"{start_ts:.0f}",
            "--faults", str(faults), "--host", "127.0.0.1", "--port", str(port),
            "--qos", "1", "--client-id", "aemon-demo-plant",
            "--payload", self.options.payload, "--prefix", "plant",
        ]  # fmt: skip
        plant = spawn(command, self.workdir / "plant.log")
        self.children.add("plant", plant)
        return start_ts, plant

    # -- running ------------------------------------------------------------------------
    def run(self, stack: Stack, view: View) -> str:
        """Until the schedule is over, `DEMO_SECONDS` (the plant's pauses not counted), or a
        child dies; says which."""
        daemon = stack.daemon.proc
        stop_at = time.monotonic() + self.options.seconds
        hold = PlantHold(stack.plant, self.scenario.machines)
        try:
            while True:
                state = stack.watch.look(self.wall_s())
                hold.update(state)
                state.plant_paused = hold.paused
                view.update(state)
                if stack.plant.poll() is not None:
                    return "schedule over" if stack.plant.returncode == 0 else "plant failed"
                if daemon is None or daemon.poll() is not None:
                    return "daemon exited"
                if time.monotonic() - hold.held_s() >= stop_at:
                    return "DEMO_SECONDS"
                time.sleep(POLL_S)
        finally:
            hold.resume()  # a stopped plant could not take the SIGTERM that ends it

    def settle(self, stack: Stack) -> RunState:
        """Stops the plant, then waits until the daemon has scored what it received."""
        terminate(stack.plant)
        previous: list[tuple[object, object]] = []

        def steady() -> bool:
            nonlocal previous
            state = stack.watch.look(self.wall_s())
            now = [(m["newest_ts"], m["scored_until"]) for m in state.machines]
            done, previous = now == previous and state.daemon_error is None, now
            return done

        daemon = stack.daemon.proc
        if daemon is None or daemon.poll() is not None:
            return stack.watch.look(self.wall_s())
        try:
            wait_for(steady, SETTLE_TIMEOUT_S, "the daemon to score what it received", 1.0)
        except TimeoutError:
            log.warning("daemon_still_busy", after_s=SETTLE_TIMEOUT_S)
        return stack.watch.look(self.wall_s())

    def report(self, stack: Stack, state: RunState) -> Report:
        end_ts = state.newest_ts or stack.start_ts
        report = build_report(state.truth, state.events, self.options.grace, end_ts)
        report.start_ts = stack.start_ts
        started = {(t["machine"], t["fault"]) for t in state.truth}
        report.not_reached = [
            f"{f.machine} {f.kind.value}"
            for f in self.scenario.faults
            if (f.machine, f.kind.value) not in started
        ]
        report.prometheus_fired = stack.watch.prometheus_fired(self.wall_s() + 5)
        return report


class PlantHold:
    """Stops the plant by PID (SIGSTOP) once every machine has learnt while a first model
    is still being fitted, and continues it (SIGCONT) when every machine scores or after
    `HOLD_MAX_S`. Fits run one after another, so on a slow or busy box the faults would
    otherwise come before the models that are to catch them. The plant's pacer goes on at
    its pace after the pause; event time stays behind the wall clock."""

    def __init__(self, plant: subprocess.Popen[bytes], machines: int) -> None:
        self.plant, self.machines = plant, machines
        self.since: float | None = None
        self.done = False  # once: later fine-tunes are not waited for
        self.held = 0.0

    @property
    def paused(self) -> bool:
        return self.since is not None

    def held_s(self) -> float:
        """Wall seconds the plant has been held so far."""
        now = time.monotonic()
        return self.held + (now - self.since if self.since is not None else 0.0)

    def update(self, state: RunState) -> None:
        machines = state.machines
        scoring = len(machines) >= self.machines and all(m["state"] == "scoring" for m in machines)
        if self.since is None:
            if not self.done and not scoring and self._learnt(machines):
                self._signal(signal.SIGSTOP)
                self.since = time.monotonic()
                log.info("plant_paused", reason="first models being fitted")
        elif scoring or time.monotonic() - self.since >= HOLD_MAX_S:
            self.resume()

    def _learnt(self, machines: list[dict[str, Any]]) -> bool:
        return len(machines) >= self.machines and all(
            m["state"] == "scoring" or m["fitting"] for m in machines
        )

    def resume(self) -> None:
        if self.since is None:
            return
        self._signal(signal.SIGCONT)
        self.held, self.since, self.done = self.held_s(), None, True
        log.info("plant_resumed", held_s=round(self.held, 1))

    def _signal(self, sig: int) -> None:
        if self.plant.poll() is None:
            os.kill(self.plant.pid, sig)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path

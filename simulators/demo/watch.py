"""What the demo knows of a run, read from the daemon and the plant as any client would:
alert events (`aemon/events`) and ground truth (`sim/truth/<machine>`) over MQTT, each
machine's state, score and threshold from the daemon's `/api/machines`, and the state of
AemonMachineAnomalous from Prometheus."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from simulators.clients import Subscriber
from simulators.stack import Daemon, Prometheus

EVENTS_TOPIC = "aemon/events"
TRUTH_PREFIX = "sim/truth/"
PROMETHEUS_ALERT = "AemonMachineAnomalous"


@dataclass
class RunState:
    """One look at the run; the view renders it, the report is built from the last one."""

    wall_s: float
    machines: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # arrival order
    truth: list[dict[str, Any]] = field(default_factory=list)
    prometheus: dict[str, str] = field(default_factory=dict)  # machine -> pending | firing
    daemon_error: str | None = None
    plant_paused: bool = False  # held by the demo while first models are fitted

    @property
    def newest_ts(self) -> float | None:
        """Event time of the newest reading the daemon took in."""
        times = [m["newest_ts"] for m in self.machines if m.get("newest_ts") is not None]
        return max(times) if times else None

    def active_faults(self) -> dict[str, str]:
        """Machine -> the fault injected on it now, by the truth received so far."""
        active: dict[str, str] = {}
        for t in self.truth:
            if t["state"] == "start":
                active[t["machine"]] = t["fault"]
            elif active.get(t["machine"]) == t["fault"]:
                del active[t["machine"]]
        return active

    def current_alerts(self) -> dict[str, dict[str, Any]]:
        """Machine -> the newest event of its alert, while that alert fires."""
        latest: dict[str, dict[str, Any]] = {}
        for event in self.events:
            latest[event["machine"]] = event
        return {m: e for m, e in latest.items() if e["state"] == "firing"}

    def counts(self) -> dict[str, int]:
        """Machines per state (discovering, learning, scoring)."""
        out: dict[str, int] = {}
        for m in self.machines:
            out[m["state"]] = out.get(m["state"], 0) + 1
        return out


class Watch:
    """Subscribes before the plant starts, so no truth or alert is missed."""

    def __init__(self, broker_port: int, daemon: Daemon, prometheus: Prometheus | None):
        self.daemon = daemon
        self.prometheus = prometheus
        self.subscriber = Subscriber(broker_port, [EVENTS_TOPIC, f"{TRUTH_PREFIX}#"])
        self.last = RunState(0.0)

    def look(self, wall_s: float) -> RunState:
        state = RunState(
            wall_s,
            events=self.subscriber.json_on(EVENTS_TOPIC),
            truth=self.subscriber.json_under(TRUTH_PREFIX),
        )
        try:
            state.machines = sorted(self.daemon.machines().values(), key=_plant_order)
        except (OSError, RuntimeError) as exc:  # a busy or stopped daemon: keep the last view
            state.machines, state.daemon_error = self.last.machines, str(exc)
        state.prometheus = self._prometheus_alerts()
        self.last = state
        return state

    def _prometheus_alerts(self) -> dict[str, str]:
        if self.prometheus is None:
            return {}
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            return {
                a["labels"].get("machine", ""): a["state"]
                for a in self.prometheus.alerts()
                if a["labels"].get("alertname") == PROMETHEUS_ALERT
            }
        return self.last.prometheus

    def prometheus_fired(self, over_s: float) -> list[str] | None:
        """Machines for which AemonMachineAnomalous fired in the last `over_s` seconds;
        None when Prometheus does not answer."""
        if self.prometheus is None:
            return None
        expr = (
            f'max_over_time(ALERTS{{alertname="{PROMETHEUS_ALERT}",alertstate="firing"}}'
            f"[{max(1, round(over_s))}s])"
        )
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            return sorted(r["metric"].get("machine", "") for r in self.prometheus.query(expr))
        return None

    def close(self) -> None:
        self.subscriber.close()


def _plant_order(machine: dict[str, Any]) -> tuple[int, str]:
    """pump-1, fan-1, compressor-1, pump-2, ...: the plant's own order."""
    name = str(machine["machine"])
    kind, _, number = name.rpartition("-")
    kinds = {"pump": 0, "fan": 1, "compressor": 2}
    return (int(number) * 3 + kinds.get(kind, 3) if number.isdigit() else 10**6, name)

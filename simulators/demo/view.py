"""The demo's screen: a live table (rich) on a terminal, plain log lines otherwise."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from simulators.demo.episodes import parse_time
from simulators.demo.scenario import Scenario
from simulators.demo.watch import RunState

log = structlog.get_logger("simulators.demo")
BAR_CELLS = 9
BAR_FULL_RATIO = 3.0  # a bar full at 3x the threshold; its threshold mark at a third
# The live table's columns and their widths: 120 characters in all.
COLUMNS = {
    "machine": 12,
    "state": 16,
    "score/threshold": 16,
    "alert": 6,
    "top sensor": 22,
    "fault (truth)": 15,
    "Prometheus": 10,
}


@dataclass(frozen=True)
class Context:
    """What the views need besides the run's state."""

    scenario: Scenario
    speed: float
    start_ts: float  # event time of the plant's first reading
    addresses: dict[str, str]

    def phase(self, state: RunState) -> str:
        if state.plant_paused:
            return "plant paused while the models are fitted"
        if state.newest_ts is None:
            return "starting"
        t = state.newest_ts - self.start_ts
        faults = self.scenario.faults
        if t < self.scenario.learning_s:
            return "learning normal operation"
        if t < min(f.start_s for f in faults):
            return "scoring normal operation"
        if t < max(f.end_s for f in faults):
            return "faults injected"
        return "after the faults"


def clock(ts: float | None) -> str:
    return "--:--:--" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def elapsed(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}"


def state_text(machine: dict[str, Any], learning_windows: int) -> Text:
    if machine["state"] == "scoring":
        return Text(f"scoring v{machine['model_version']}", style="green")
    if machine["state"] == "learning":
        done = machine["learning_windows"]
        label = "fitting model" if machine["fitting"] else f"learning {done}/{learning_windows}"
        return Text(label, style="cyan")
    return Text(machine["state"], style="dim")


def score_bar(score: float | None, threshold: float | None) -> Text:
    """`▇▇▇|▇▁▁▁▁   1.4x`: the score against the threshold (the mark), and their ratio."""
    if score is None or not threshold:
        return Text("")
    ratio = score / threshold
    filled = min(BAR_CELLS, round(ratio / BAR_FULL_RATIO * BAR_CELLS))
    mark = round(BAR_CELLS / BAR_FULL_RATIO)
    style = "red" if ratio >= 1 else "yellow" if ratio >= 0.7 else "green"
    bar = Text()
    for i in range(BAR_CELLS):
        bar.append("|" if i == mark else "▇" if i < filled else "▁", style=style)
    bar.append(ratio_text(ratio))
    return bar


def ratio_text(ratio: float) -> str:
    """Six characters and an `x`, with a space before the digits up to 99,999: held faults
    score thousands of times their threshold.

    >>> ratio_text(1.44), ratio_text(3811.8), ratio_text(2.5e6)
    ('   1.4x', '  3812x', '>1e+05x')
    """
    if ratio < 1000:
        return f"{ratio:6.1f}x"
    if ratio < 100_000:
        return f"{ratio:6.0f}x"
    return ">1e+05x"


def top_sensors(event: dict[str, Any] | None, n: int = 2) -> str:
    if event is None:
        return ""
    return ", ".join(f"{s['sensor']} {s['share']:.0%}" for s in event["top_sensors"][:n])


def machine_table(state: RunState, ctx: Context) -> Table:
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, collapse_padding=True)
    for column, width in COLUMNS.items():
        table.add_column(column, width=width, no_wrap=True, overflow="ellipsis")
    faults, alerts = state.active_faults(), state.current_alerts()
    windows = ctx.scenario.config["learning"]["windows"]
    for m in state.machines:
        name = m["machine"]
        alert = alerts.get(name)
        table.add_row(
            name,
            state_text(m, windows),
            score_bar(m["score"], m["threshold"]),
            Text("FIRING", style="bold red") if alert else Text(m["alert"], style="dim"),
            top_sensors(alert, 1),
            Text(faults.get(name, ""), style="magenta"),
            Text(state.prometheus.get(name, ""), style="bold red"),
        )
    return table


def recent_lines(state: RunState, n: int = 8) -> list[tuple[float, Text]]:
    """The newest truth and alert events (updates left out), by event time."""
    lines = [
        (float(t["ts"]), Text(f"{t['machine']:<13} fault {t['fault']} {t['state']}s", "magenta"))
        for t in state.truth
    ]
    for e in state.events:
        if e["event"] == "updated":
            continue
        ratio = e["score"] / e["threshold"] if e["threshold"] else 0.0
        text = f"{e['machine']:<13} alert {e['event']:<8} {ratio_text(ratio)}  {top_sensors(e)}"
        style = "red" if e["event"] == "raised" else "green"
        lines.append((parse_time(e["updated_at"]) or 0.0, Text(text, style)))
    return sorted(lines, key=lambda line: line[0])[-n:]


def render(state: RunState, ctx: Context) -> RenderableType:
    newest = state.newest_ts
    plant = "" if newest is None else f" (+{elapsed(newest - ctx.start_ts)})"
    header = Text.assemble(
        ("aemon demo", "bold"),
        f"  plant time {clock(newest)} UTC{plant} x{ctx.speed:g}  wall {elapsed(state.wall_s)}",
        ("  " + ctx.phase(state), "bold cyan"),
    )
    events = Table.grid(padding=(0, 2))
    for ts, text in recent_lines(state):
        events.add_row(Text(clock(ts), "dim"), text)
    links = Text(
        "  ".join(f"{k} {v}" for k, v in ctx.addresses.items() if k != "logs"), style="dim"
    )
    return Group(header, machine_table(state, ctx), events, links)


class Screen:
    """Keeps the busiest frame of the run (the most faults injected, alerts firing on the
    daemon and in Prometheus; the latest of equals) to save as text: `DEMO_SCREEN`."""

    def __init__(self) -> None:
        self.busiest = -1
        self.frame: RenderableType | None = None

    def offer(self, state: RunState, frame: RenderableType) -> None:
        busy = len(state.active_faults()) + len(state.current_alerts())
        busy += sum(1 for s in state.prometheus.values() if s == "firing")
        if busy >= self.busiest:
            self.busiest, self.frame = busy, frame

    def save(self, path: Path, width: int = 120) -> None:
        console = Console(record=True, width=width, file=io.StringIO())
        console.print(self.frame or Text("(no frame)"))
        path.write_text(console.export_text())


class View:
    """Renders each state; a terminal shows it live, else `LogView` logs the changes."""

    def __init__(self, ctx: Context, screen: Screen | None) -> None:
        self.ctx, self.screen = ctx, screen

    def __enter__(self) -> View:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def frame(self, state: RunState) -> RenderableType:
        frame = render(state, self.ctx)
        if self.screen is not None:
            self.screen.offer(state, frame)
        return frame

    def update(self, state: RunState) -> None:
        raise NotImplementedError


class LiveView(View):
    """The table, redrawn in place at every update."""

    def __init__(self, console: Console, ctx: Context, screen: Screen | None = None) -> None:
        super().__init__(ctx, screen)
        self.live = Live(console=console, auto_refresh=False)

    def __enter__(self) -> LiveView:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def update(self, state: RunState) -> None:
        self.live.update(self.frame(state), refresh=True)


class LogView(View):
    """Headless: one log line per change (machine state, alert, fault, Prometheus alert)
    and a progress line every `progress_s` wall seconds."""

    def __init__(self, ctx: Context, screen: Screen | None = None, progress_s: float = 10.0):
        super().__init__(ctx, screen)
        self.progress_s = progress_s
        self.states: dict[str, str] = {}
        self.seen_events = self.seen_truth = 0
        self.prometheus: dict[str, str] = {}
        self.next_progress = 0.0

    def update(self, state: RunState) -> None:
        if self.screen is not None:
            self.frame(state)
        self._machines(state)
        for t in state.truth[self.seen_truth :]:
            log.info(
                "fault_" + t["state"], machine=t["machine"], fault=t["fault"], at=clock(t["ts"])
            )
        self.seen_truth = len(state.truth)
        for e in state.events[self.seen_events :]:
            if e["event"] != "updated":
                log.info(
                    "alert_" + e["event"],
                    machine=e["machine"],
                    ratio=round(e["score"] / e["threshold"], 2) if e["threshold"] else None,
                    top=top_sensors(e),
                    at=e["updated_at"][11:19],
                )
        self.seen_events = len(state.events)
        self._prometheus(state)
        if state.wall_s >= self.next_progress:
            self.next_progress = state.wall_s + self.progress_s
            self._progress(state)

    def _progress(self, state: RunState) -> None:
        facts: dict[str, object] = dict(state.counts())
        learning = [m["learning_windows"] for m in state.machines if m["state"] == "learning"]
        if learning:
            windows = self.ctx.scenario.config["learning"]["windows"]
            facts["learning_windows"] = f"{min(learning)}/{windows}"
        log.info(
            "progress",
            plant_time=clock(state.newest_ts),
            phase=self.ctx.phase(state),
            **facts,
        )

    def _machines(self, state: RunState) -> None:
        for m in state.machines:
            if self.states.get(m["machine"]) == m["state"]:
                continue
            self.states[m["machine"]] = m["state"]
            if m["state"] == "scoring":
                threshold = round(m["threshold"], 4)
                log.info(
                    "machine_scoring",
                    machine=m["machine"],
                    model_version=m["model_version"],
                    threshold=threshold,
                )
            else:
                log.info("machine_" + m["state"], machine=m["machine"])

    def _prometheus(self, state: RunState) -> None:
        for machine, alert_state in state.prometheus.items():
            if self.prometheus.get(machine) != alert_state:
                log.info(
                    "prometheus_alert",
                    alert="AemonMachineAnomalous",
                    machine=machine,
                    state=alert_state,
                )
        self.prometheus = dict(state.prometheus)

"""The episode report on the screen and as JSON."""

from __future__ import annotations

from pathlib import Path

import orjson
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from simulators.demo.episodes import Report
from simulators.demo.view import clock, elapsed


def render_report(report: Report, start_ts: float) -> RenderableType:
    """Each fault with its detection and delay, then every false alert; times are plant
    time since the plant's first reading."""
    table = Table(title="Episode report (event time)", header_style="bold")
    for column in ("machine", "fault", "injected", "detected", "delay", "alert's top sensors"):
        table.add_column(column)
    for f in report.faults:
        span = f"+{elapsed(f.start - start_ts)} .. +{elapsed(f.end - start_ts)}"
        found = (
            Text("yes", "green")
            if f.detected
            else Text("not yet", "yellow")
            if f.open
            else Text("NO", "bold red")
        )
        table.add_row(
            f.machine,
            f.fault,
            span + (" (run ended)" if f.open else ""),
            found,
            "" if f.delay_s is None else f"{f.delay_s:.0f} s",
            ", ".join(f.top_sensors[:2]),
        )
    lines: list[RenderableType] = [table if report.faults else Text("no fault injected yet")]
    for e in report.false_alerts:
        lines.append(
            Text(
                f"FALSE ALERT {e.machine} raised at +{elapsed(e.raised_at - start_ts)} "
                f"({clock(e.raised_at)} UTC), peak {e.peak_ratio:.1f}x threshold, "
                f"top: {', '.join(e.top_sensors)}",
                "bold red",
            )
        )
    lines.append(Text(summary(report), "bold"))
    return Group(*lines)


def summary(report: Report) -> str:
    fired = (
        "unknown (Prometheus did not answer)"
        if report.prometheus_fired is None
        else ", ".join(report.prometheus_fired) or "none"
    )
    text = (
        f"detected {len(report.detected)} of {len(report.faults)} injected faults; "
        f"{len(report.false_alerts)} false alerts (grace {report.grace_s:g} s after a fault); "
        f"Prometheus AemonMachineAnomalous fired for: {fired}"
    )
    if report.not_reached:
        text += f"; not reached before the end: {', '.join(report.not_reached)}"
    return text


def write_report(report: Report, *paths: Path) -> None:
    data = orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2)
    for path in paths:
        path.write_bytes(data + b"\n")

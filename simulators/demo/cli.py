"""`make demo` (`python -m simulators.demo`): options from the environment, the screen, the
end of the run and its report. A Ctrl-C, SIGTERM or SIGHUP, or an error, ends the run the
same way: the daemon scores what it has, the report is printed and every child is stopped
by its PID."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

import structlog
from rich.console import Console

from simulators.demo.episodes import Report
from simulators.demo.report import render_report, write_report
from simulators.demo.run import Demo, Options
from simulators.demo.scenario import Scenario
from simulators.demo.view import Context, LiveView, LogView, Screen, View

log = structlog.get_logger("simulators.demo")
FAILURES = ("daemon exited", "plant failed")  # the report is printed, the exit code is 1


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _stopping(signum: int, frame: FrameType | None) -> None:
    log.warning("already_stopping", detail="every child is being stopped by its PID")


def main(env: dict[str, str] | None = None) -> int:
    try:
        options = Options.from_env(dict(os.environ) if env is None else env)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tty = sys.stdout.isatty()
    console = Console(width=None if tty else 130)
    configure_logging()
    options.workdir.mkdir(parents=True, exist_ok=True)
    demo = Demo(options, Scenario())
    # SIGINT too: started in the background, a program inherits it ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    ended, report = "failed", None
    try:
        ended = show(demo, console, tty)
    except KeyboardInterrupt:
        ended = "interrupted"
    except Exception as exc:
        log.error("demo_failed", error=str(exc), logs=str(options.workdir))
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _stopping)
        try:
            if demo.stack is not None and ended != "failed":
                report = demo.report(demo.stack, demo.settle(demo.stack))
        except Exception as exc:  # the children are stopped whatever went wrong
            log.error("report_failed", error=str(exc))
        finally:
            demo.children.stop()
    console.print(f"demo ended ({ended}); every process it started has exited")
    if report is None:
        return 1
    finish(console, options, report)
    return 1 if ended in FAILURES else 0


def show(demo: Demo, console: Console, tty: bool) -> str:
    """Starts the stack, prints where to look, and follows the run until it ends."""
    console.print("starting Mosquitto, the daemon and Prometheus ...")
    stack = demo.start()
    for name, value in stack.addresses().items():
        console.print(f"{name:>12}  {value}")
    speed = demo.options.speed
    console.print(demo.scenario.settings_note(speed))
    console.print(
        f"plant: {demo.scenario.machines} machines, {len(demo.scenario.faults)} faults, "
        f"{demo.scenario.wall_s(speed):.0f} s at x{speed:g} (Ctrl-C stops)"
    )
    ctx = Context(demo.scenario, speed, stack.start_ts, stack.addresses())
    screen = Screen() if demo.options.screen else None
    view: View = LiveView(console, ctx, screen) if tty else LogView(ctx, screen)
    try:
        with view:
            return demo.run(stack, view)
    finally:
        if screen is not None and demo.options.screen is not None:
            screen.save(demo.options.screen)


def finish(console: Console, options: Options, report: Report) -> None:
    console.print(render_report(report, report.start_ts))
    paths = [options.workdir / "report.json", *([options.report] if options.report else [])]
    write_report(report, *paths)
    console.print(f"report: {paths[-1]}")


def configure_logging() -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    )

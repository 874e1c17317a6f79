"""`aemon run`, `aemon check-config`: parse, call, print."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from service import __version__
from service.config import ConfigError, Settings, load_settings
from service.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aemon", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the daemon")
    run.add_argument("--config", type=Path, help="TOML config (default: $AEMON_CONFIG)")
    check = commands.add_parser("check-config", help="validate a config file and print it")
    check.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    if args.command == "run":
        return run_daemon(args.config)
    return check_config(args.file)


def _load(path: Path | None) -> Settings | None:
    try:
        return load_settings(path)
    except (ConfigError, ValidationError, OSError, ValueError) as exc:
        print(f"aemon: invalid configuration: {exc}", file=sys.stderr)
        return None


def check_config(path: Path) -> int:
    settings = _load(path)
    if settings is None:
        return 2
    print(settings.model_dump_json(indent=2))
    return 0


def run_daemon(path: Path | None) -> int:
    settings = _load(path)
    if settings is None:
        return 2
    configure_logging(settings.log.level, settings.log.format)
    from service.app import App  # torch is imported here, not for check-config

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    App(settings).run(stop)
    return 0

"""`aemon run`, `aemon train`, `aemon evaluate`, `aemon models`, `aemon check-config`: parse,
call, print."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError

from service import __version__
from service.core.config import ConfigError, Settings, load_settings
from service.core.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aemon", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the daemon")
    run.add_argument("--config", type=Path, help="TOML config (default: $AEMON_CONFIG)")
    check = commands.add_parser("check-config", help="validate a config file and print it")
    check.add_argument("file", type=Path)
    models = commands.add_parser("models", help="list model versions or roll one back")
    models.add_argument("--config", type=Path, help="TOML config (default: $AEMON_CONFIG)")
    actions = models.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every machine's versions; * marks the current one")
    rollback = actions.add_parser("rollback", help="make an older version current")
    rollback.add_argument("machine")
    rollback.add_argument("version", type=int, nargs="?", help="default: the previous one")
    _add_evaluate(commands)
    _add_train(commands)
    args = parser.parse_args(argv)
    if args.command == "run":
        return run_daemon(args.config)
    if args.command == "train":
        return train(args)
    if args.command == "models":
        return manage_models(args)
    if args.command == "evaluate":
        return evaluate(args)
    return check_config(args.file)


def evaluate(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 2
    configure_logging(settings.log.level, settings.log.format)
    from service.offline.evaluate import run_evaluate

    return run_evaluate(settings, args)


def train(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 2
    configure_logging(settings.log.level, settings.log.format)
    from service.offline.train import run_train  # imports torch

    return run_train(settings, args)


def _add_train(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tr = commands.add_parser(
        "train",
        help="fit machines' models from history CSV files into the state directory "
        "(stop the daemon first; it loads them when it starts)",
    )
    tr.add_argument("--config", type=Path, help="TOML config (default: $AEMON_CONFIG)")
    tr.add_argument("--machine", help="the machine of every file (default: each file's stem)")
    tr.add_argument(
        "--max-windows",
        type=int,
        default=20000,
        help="windows per machine at most, evenly spread over its history (default 20000)",
    )
    tr.add_argument("csv", type=Path, nargs="+", help="SKAB-format or ts,<sensor>... CSV")


def manage_models(args: argparse.Namespace) -> int:
    """Works on the state directory; a running daemon picks a rollback up at restart."""
    settings = _load(args.config)
    if settings is None:
        return 2
    from service.learning.store import ModelStore, StoreError

    store = ModelStore(settings.state.dir)
    if args.action == "rollback":
        try:
            version = store.rollback(args.machine, args.version)
        except StoreError as exc:
            print(f"aemon: {exc}", file=sys.stderr)
            return 1
        print(f"{args.machine}: version {version} is current; restart aemon to use it")
        return 0
    for machine in store.machines():
        for info in store.versions(machine):
            mark = "*" if info.current else " "
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info.created_at))
            line = [f"{mark} {machine}", f"v{info.version}", f"{created}Z"]
            print("\t".join([*line, f"threshold={info.threshold:.4g}", *_facts(info.facts)]))
    return 0


def _facts(facts: dict[str, Any]) -> list[str]:
    """`reason=finetune  parent=v2  windows=493  loss=0.0351`, in that order."""
    shown = [f"reason={facts.get('reason', 'unspecified')}"]
    if facts.get("parent") is not None:
        shown.append(f"parent=v{facts['parent']}")
    if facts.get("windows") is not None:
        shown.append(f"windows={facts['windows']}")
    if facts.get("final_loss") is not None:
        shown.append(f"loss={facts['final_loss']:.4g}")
    return shown


def _add_evaluate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = commands.add_parser(
        "evaluate",
        help="replay labelled CSV files (SKAB, NAB, or ts,<sensor>...,anomaly), print metrics",
    )
    ev.add_argument(
        "--config", type=Path, help="TOML config (default: $AEMON_CONFIG, else the defaults)"
    )
    ev.add_argument("--model", help="autoencoder family (default: the config's model.kind)")
    ev.add_argument(
        "--warmup",
        type=int,
        default=400,
        help="rows per file fitted as normal (default 400); 0 with --base: learn from the "
        "base file only and score every row",
    )
    ev.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    ev.add_argument("--plot", type=Path, help="write a PNG of every file (needs the [bench] extra)")
    ev.add_argument(
        "--base", type=Path, help="normal history to pre-train on first (any of the formats)"
    )
    ev.add_argument(
        "--labels", type=Path, help="NAB files' label windows (e.g. NAB's combined_windows.json)"
    )
    ev.add_argument(
        "csv",
        type=Path,
        nargs="+",
        help="labelled files; each is cut at its own period unless the config sets window.period",
    )


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

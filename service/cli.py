"""`aemon run`, `aemon train`, `aemon evaluate`, `aemon models`, `aemon check-config`,
`aemon machine`: parse, call, print. `--config` is taken before or after a subcommand."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from service import __version__, machine_cli
from service.core.config import ConfigError, Settings, load_settings
from service.core.config_errors import nearest
from service.core.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,  # so that a subcommand's absent one keeps the main's
        help="TOML config (default: $AEMON_CONFIG, else the defaults)",
    )
    parser = argparse.ArgumentParser(prog="aemon", description=__doc__, parents=[common])
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", parents=[common], help="run the daemon")
    check = commands.add_parser(
        "check-config",
        parents=[common],
        help="validate a config file as `aemon run` would (settings, model kind, files, state "
        "directory, topics) and print it",
    )
    check.add_argument("file", type=Path, nargs="?", help="default: --config or $AEMON_CONFIG")
    models = commands.add_parser(
        "models", parents=[common], help="list model versions or roll one back"
    )
    actions = models.add_subparsers(dest="action", required=True)
    actions.add_parser(
        "list", parents=[common], help="every machine's versions; * marks the current one"
    )
    rollback = actions.add_parser(
        "rollback", parents=[common], help="make an older version current"
    )
    rollback.add_argument("machine")
    rollback.add_argument("version", type=int, nargs="?", help="default: the previous one")
    _add_evaluate(commands, common)
    _add_train(commands, common)
    machine_cli.add_parser(commands, common)
    args = parser.parse_args(argv)
    args.config = getattr(args, "config", None)
    if args.command == "run":
        return run_daemon(args.config)
    if args.command == "train":
        return train(args)
    if args.command == "models":
        return manage_models(args)
    if args.command == "evaluate":
        return evaluate(args)
    if args.command == "machine":
        settings = _load(args.config)
        return machine_cli.run(args, settings) if settings is not None else 2
    return check_config(args.file or args.config)


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


def _add_train(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    tr = commands.add_parser(
        "train",
        parents=[common],
        help="fit machines' models from history CSV files into the state directory "
        "(stop the daemon first; it loads them when it starts)",
    )
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
    machines = store.machines()
    if args.action == "rollback":
        if args.machine not in machines:
            print(f"aemon: {_unknown_machine(args.machine, machines, store.root)}", file=sys.stderr)
            return 1
        try:
            version = store.rollback(args.machine, args.version)
        except StoreError as exc:
            print(f"aemon: {exc}", file=sys.stderr)
            return 1
        print(f"{args.machine}: version {version} is current; restart aemon to use it")
        return 0
    if not machines:
        print(f"aemon: no models in {store.root}", file=sys.stderr)
    for machine in machines:
        for info in store.versions(machine):
            mark = "*" if info.current else " "
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info.created_at))
            line = [f"{mark} {machine}", f"v{info.version}", f"{created}Z"]
            print("\t".join([*line, f"threshold={info.threshold:.4g}", *_facts(info.facts)]))
    return 0


def _unknown_machine(name: str, machines: list[str], root: Path) -> str:
    """`unknown machine pump-l: no model versions in <root>; did you mean pump-1?`"""
    text = f"unknown machine {name}: no model versions in {root}"
    guess = nearest(name, machines)
    if guess is not None:
        return f"{text}; did you mean {guess}?"
    if machines and len(machines) <= 10:
        return f"{text} (machines: {', '.join(machines)})"
    return text


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


def _add_evaluate(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    ev = commands.add_parser(
        "evaluate",
        parents=[common],
        help="replay labelled CSV files (SKAB, NAB, or ts,<sensor>...,anomaly), print metrics",
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
    except ConfigError as exc:
        _report("invalid configuration", list(exc.problems))
    except (OSError, ValueError) as exc:
        _report("invalid configuration", [str(exc)])
    return None


def _report(title: str, problems: list[str]) -> None:
    """One problem on the line of `title`; several below it, one a line."""
    if len(problems) == 1:
        print(f"aemon: {title}: {problems[0]}", file=sys.stderr)
        return
    print(f"aemon: {title} ({len(problems)} problems):", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)


def _ready(path: Path | None, *, starting: bool) -> Settings | None:
    """Settings that `aemon run` can start with (`service.preflight`), else None, the
    problems printed; warnings are printed either way."""
    settings = _load(path)
    if settings is None:
        return None
    from service.preflight import preflight  # imports torch (the model registry)

    chosen = path if path is not None else os.environ.get("AEMON_CONFIG")
    file = Path(chosen) if chosen is not None else None
    checked = preflight(settings, file, starting=starting)
    for warning in checked.warnings:
        print(f"aemon: warning: {warning}", file=sys.stderr)
    if not checked.ok:
        _report("invalid configuration", checked.problems)
        return None
    return settings


def check_config(path: Path | None) -> int:
    settings = _ready(path, starting=False)
    if settings is None:
        return 2
    print(settings.model_dump_json(indent=2))
    return 0


def run_daemon(path: Path | None) -> int:
    settings = _ready(path, starting=True)
    if settings is None:
        return 2
    configure_logging(settings.log.level, settings.log.format)
    from service.app import App  # the daemon itself: only for run

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    App(settings).run(stop)
    return 0

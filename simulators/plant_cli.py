"""`python -m simulators.plant`: publish a simulated plant and its ground truth to MQTT."""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from collections.abc import Sequence

import orjson
import structlog

from simulators.faults import FaultSpec, load_faults, parse_fault
from simulators.kinds import KINDS
from simulators.machine import default_machines
from simulators.model import FaultKind
from simulators.plant import Plant, Sample, TruthEvent
from simulators.publish import (
    TRUTH_TOPIC,
    Pacer,
    Sink,
    configure_logging,
    machine_payload,
    open_sink,
    sensor_payload,
    stop_on_signals,
)
from simulators.sparkplug_edge import SparkplugSink

log = structlog.get_logger("simulators.plant")
PROGRESS_EVERY_S = 10.0  # wall seconds between progress log lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulators.plant",
        description="Publish a simulated plant (pumps, fans, compressors) to MQTT, with "
        "injected faults and their ground truth on sim/truth/<machine>.",
    )
    _plant_options(p)
    _timing_options(p)
    _output_options(p)
    return p


def _plant_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--machines", type=int, default=6, help="number of machines (default 6)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same stream (default 0)")
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        type=_fault_arg,
        metavar="MACHINE:KIND:START_S:DURATION_S[:sensor=S,severity=X]",
        help="repeatable; kinds: " + ", ".join(k.value for k in FaultKind),
    )
    p.add_argument(
        "--faults",
        type=_faults_file,
        default=[],
        metavar="FILE.toml",
        help="faults as [[fault]] tables (machine, kind, start_s, duration_s, sensor, severity)",
    )
    p.add_argument("--missing", type=float, default=0.002, help="probability of a lost reading")
    p.add_argument("--steady", action="store_true", help="no operating-point changes")
    p.add_argument("--no-stops", action="store_true", help="no stop or idle segments")


def _timing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--duration",
        type=float,
        default=math.inf,
        help="seconds of event time (default: until stopped)",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="times real time; 0 = as fast as possible (default 1)",
    )
    p.add_argument(
        "--start",
        type=float,
        default=None,
        help="event time of the first reading, Unix seconds (default: now at "
        "--speed 1, else now - duration so no reading is in the future)",
    )
    p.add_argument("--period", type=float, default=1.0, help="sample period, s (default 1)")
    p.add_argument("--jitter", type=float, default=0.02, help="timestamp jitter, periods (1 sd)")


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--payload",
        choices=("per-machine", "per-sensor", "sparkplug"),
        default="per-machine",
        help="plant/<machine> {ts, values}, plant/<machine>/<sensor> {ts, value}, or "
        "Sparkplug B: one edge node `edge` of group --prefix, each machine a device",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--qos", type=int, choices=(0, 1), default=0, help="QoS of the readings")
    p.add_argument("--prefix", default="plant", help="topic prefix (default plant)")
    p.add_argument("--client-id", default="", help="MQTT client id (default: random)")
    p.add_argument("--stdout", action="store_true", help="print `topic payload` lines instead")
    p.add_argument("--list", action="store_true", help="print machines, sensors, faults; exit")


def _fault_arg(text: str) -> FaultSpec:
    try:
        return parse_fault(text)
    except ValueError as exc:  # argparse would print only "invalid value"
        raise argparse.ArgumentTypeError(str(exc)) from None


def _faults_file(path: str) -> list[FaultSpec]:
    try:
        return load_faults(path)
    except (OSError, ValueError) as exc:  # TOMLDecodeError is a ValueError
        raise argparse.ArgumentTypeError(f"{path}: {exc}") from None


def default_start(now: float, duration: float, speed: float) -> float:
    """The first reading's timestamp when none is given: event time never runs ahead of the
    wall clock, which the daemon would reject as `future`.

    >>> [default_start(1000.0, 100.0, s) for s in (0.0, 4.0, 1.0, 0.5)]
    [900.0, 925.0, 1000.0, 1000.0]
    """
    now = float(math.floor(now))  # whole seconds: the sampling grid falls on round times
    if speed == 0:
        return now - duration
    return now - duration * (1.0 - 1.0 / speed) if speed > 1 else now


def make_plant(args: argparse.Namespace) -> Plant:
    machines = default_machines(
        args.machines, idle=not args.no_stops, stops=not args.no_stops, steady=args.steady
    )
    faults: list[FaultSpec] = [*args.faults, *args.fault]
    return Plant(machines, seed=args.seed, faults=faults, missing=args.missing, jitter=args.jitter)


def describe(plant: Plant) -> str:
    lines = []
    for m in plant.machines:
        model = KINDS[m.kind]
        sensors = ", ".join(f"{s.name} [{s.unit}]" for s in model.sensors)
        lines.append(f"{m.name} ({m.kind}): {sensors}")
        for fault, signature in model.signatures.items():
            moves = " ".join(f"{s}{'+' if d > 0 else '-'}" for s, d in signature.items())
            lines.append(f"    {fault.value}: {moves}")
        defaults = ", ".join(f"{k.value} -> {v}" for k, v in model.fault_sensor.items())
        lines.append(f"    sensor faults (default sensor): {defaults}")
    return "\n".join(lines)


def publish_plant(
    plant: Plant, sink: Sink, args: argparse.Namespace, start: float, stop: threading.Event
) -> int:
    """Publishes until the duration is over or `stop` is set; returns the samples sent."""
    pacer = Pacer(args.speed, stop)
    sent, last_log = 0, time.monotonic()
    for item in plant.events(start, args.duration, args.period):
        if isinstance(item, TruthEvent):
            sink.publish(TRUTH_TOPIC.format(machine=item.machine), _truth(item), 1)
            log.info("truth", **item.to_dict())
            continue
        if not pacer.wait(item.ts):
            break
        _publish_sample(sink, item, args.prefix, args.payload, args.qos)
        sent += 1
        if time.monotonic() - last_log > PROGRESS_EVERY_S:
            last_log = time.monotonic()
            log.info("plant_progress", samples=sent, event_ts=item.ts)
    return sent


def _truth(event: TruthEvent) -> bytes:
    return orjson.dumps(event.to_dict())


def _publish_sample(sink: Sink, s: Sample, prefix: str, payload: str, qos: int) -> None:
    if isinstance(sink, SparkplugSink):
        sink.sample(s.machine, s.ts, s.values, qos)
        return
    if payload == "per-machine":
        sink.publish(f"{prefix}/{s.machine}", machine_payload(s.ts, s.values), qos)
        return
    for sensor, value in s.values.items():
        sink.publish(f"{prefix}/{s.machine}/{sensor}", sensor_payload(s.ts, value), qos)


def open_plant_sink(args: argparse.Namespace, plant: Plant) -> Sink:
    """Where the plant goes: the options' sink, or with `--payload sparkplug` an edge node
    whose devices are the plant's machines and their sensors."""
    if args.payload != "sparkplug" or args.stdout:
        return open_sink(args)
    devices = {m.name: tuple(s.name for s in KINDS[m.kind].sensors) for m in plant.machines}
    return SparkplugSink(args.host, args.port, args.client_id, args.prefix, devices)


def _start_ts(args: argparse.Namespace) -> float | None:
    if args.start is not None:
        return float(args.start)
    if math.isinf(args.duration) and args.speed != 1:
        return None
    return default_start(time.time(), args.duration, args.speed)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        plant = make_plant(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        print(describe(plant))
        return 0
    start = _start_ts(args)
    if start is None:
        print("error: away from --speed 1, give --duration or --start", file=sys.stderr)
        return 2
    try:
        sink = open_plant_sink(args, plant)
    except OSError as exc:
        print(f"error: no MQTT broker at {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    log.info(
        "plant_started",
        machines=len(plant.machines),
        seed=args.seed,
        start_ts=start,
        duration=args.duration,
        speed=args.speed,
        faults=len(plant.faults),
    )
    wall0 = time.monotonic()
    with stop_on_signals() as stop:
        try:
            sent = publish_plant(plant, sink, args, start, stop)
        finally:
            sink.close()
    log.info("plant_finished", samples=sent, wall_s=round(time.monotonic() - wall0, 2))
    return 0

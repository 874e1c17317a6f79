"""`App`: builds the stages, starts them in order, stops them in reverse on one stop event."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections import Counter
from typing import Any

import prometheus_client
import structlog
from prometheus_client import CollectorRegistry

from service.core import heap
from service.core.config import Settings
from service.core.metrics import REJECTED, Metrics
from service.core.threads import Lull
from service.core.types import MachineState, Rejection, RejectReason
from service.doors import CommandDoors
from service.faults import arm_callback, arm_pipeline, armed_faults
from service.learning.finetune import FineTuner
from service.learning.shared_store import SharedModelStore
from service.learning.store import ModelStore
from service.scoring.runtime import configure_torch
from service.stream.alert_journal import AlertJournal
from service.stream.arrivals import Batch
from service.stream.detail import Detail
from service.stream.ingest import Ingestor
from service.stream.learning import FitResult
from service.stream.pipeline import Pipeline
from service.stream.publish import Publisher
from service.stream.rejections import RejectionLog
from service.stream.shared_alerts import SharedAlertJournal
from service.stream.sparkplug import NAMESPACE as SPARKPLUG_NAMESPACE
from service.stream.sparkplug import SparkplugReader
from service.transport.http import HttpServer, MachinePages
from service.transport.mqtt import Ack, MqttClient
from service.transport.nats_input import NatsInput
from service.transport.sparkplug_host import SparkplugHost

log = structlog.get_logger(__name__)

# Added to the fine-tuner thread's nice value. Training is background work: on a busy box
# the threads that take in readings and score them get the cores first, since a scoring
# cycle that waits for one delays every alert (benchmarks/latency.py: scoring p99 while a
# fine-tune runs).
FINETUNER_NICE = 10
# Seconds each stage may take to stop after the drain (`pipeline.drain_timeout`): the
# pipeline finishes its last cycle, a cancelled fit reaches its next batch, MQTT publishes
# `offline` after the alerts queued before it, HTTP ends its serving loop.
PIPELINE_GRACE = 2.0
FINETUNER_GRACE = 1.0
MQTT_GRACE = 5.0
HTTP_GRACE = 1.0
# In the state directory: the alerts firing, taken up after a restart.
ALERT_JOURNAL = "alerts.json"


class App:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.accepting = threading.Event()
        self.accepting.set()
        self.metrics = Metrics(registry or CollectorRegistry())
        self.rejections = RejectionLog(self.metrics)
        self.ingestor = Ingestor(
            settings.mqtt.topics,
            settings.ingest.max_payload_bytes,
            settings.ingest.future_tolerance,
            declared={name: m.sensors for name, m in settings.machines.items()},
            allow_undeclared=settings.discovery.enabled,
            allow=settings.discovery.allow if settings.discovery.mode == "allowlist" else None,
        )
        prefix = settings.mqtt.topic_prefix
        self.command_prefix = f"{prefix}/command/"
        faults = armed_faults()
        spb = settings.sparkplug
        self.sparkplug = (
            SparkplugReader(
                spb.groups,
                self.ingestor,
                self.metrics,
                lambda topic, payload: self.mqtt.publish(topic, payload, qos=0, retain=False),
                spb.rebirth_interval,
                spb.machines,
                # The pipeline is made after the MQTT client these subscriptions are for.
                lambda machines: self.pipeline.operator.mark_offline(machines),  # noqa: PLW0108
            )
            if spb.enabled
            else None
        )
        host_id = spb.host_id if spb.enabled else None
        self.sparkplug_host = SparkplugHost(settings.mqtt, host_id) if host_id else None
        on_message = arm_callback(self.on_message, faults)
        scaled_out = settings.input.kind == "nats"
        # Scaled out, readings come from NATS and MQTT carries the rest; each replica has
        # a status topic of its own (one retained `offline` must not hide the others).
        self.mqtt = MqttClient(
            settings.mqtt,
            [] if scaled_out else self.subscriptions,
            f"{prefix}/status/{settings.mqtt.client_id}" if scaled_out else f"{prefix}/status",
            on_message,
            self.metrics,
            commands=f"{self.command_prefix}+",
        )
        self.publisher = Publisher(self.mqtt, prefix, self.metrics)
        # The pipeline is made below: the input reaches it through these lambdas.
        self.nats = (
            NatsInput(
                settings,
                on_message,
                self.metrics,
                lambda: self.pipeline.queue.fill,
                lambda machines: self.pipeline.release(machines),  # noqa: PLW0108
            )
            if scaled_out
            else None
        )
        self.store = (
            SharedModelStore(settings.state.dir, self.nats, self.metrics)
            if self.nats is not None
            else ModelStore(settings.state.dir)
        )
        # Learning beside the hot path: the pipeline knows the fine-tuner as a `Learner`
        # and hands its results back through `install`, taken in at its next cycle.
        lull = Lull()  # the pipeline's waits, when training and /metrics take turns
        self.finetuner = FineTuner(settings, self.metrics, self._install, self.store, lull)
        self.pipeline = Pipeline(
            settings,
            self.metrics,
            self.rejections,
            self.publisher,
            self.finetuner,
            self.store,
            self.mqtt.together,
            AlertJournal(settings.state.dir / ALERT_JOURNAL)
            if self.nats is None
            else SharedAlertJournal(self.nats),
            lull,
        )
        self.doors = CommandDoors(
            self.pipeline, self.publisher, self.metrics, settings.http.command_token_file
        )
        detail = Detail(self.pipeline.board)
        self.http = HttpServer(
            settings.http.host,
            settings.http.port,
            self.metrics,
            self.health,
            self.ready,
            self.pipeline.snapshot,
            self.doors.from_http,
            MachinePages(detail.machine, detail.history),
            lull,
        )
        arm_pipeline(self.pipeline, faults)

    @property
    def subscriptions(self) -> list[str]:
        """The MQTT input's topic filters: the plant's topics, and Sparkplug's if enabled."""
        return self.ingestor.subscriptions + (
            self.sparkplug.subscriptions if self.sparkplug else []
        )

    def _install(self, result: FitResult) -> None:
        self.pipeline.install(result)

    # -- paho's network thread ------------------------------------------------------------
    def on_message(
        self, topic: str, payload: bytes, received_at: float, ack: Ack | None = None
    ) -> None:
        """Parse and enqueue, nothing else: a slow callback gets the client dropped. `ack`
        goes with the readings, so the message is acknowledged once they are taken in."""
        if not self.accepting.is_set():
            # Shutting down: what is still in flight stays unacknowledged, so the broker
            # redelivers it to the next session, and parsing it would only starve the drain.
            return
        if topic.startswith(self.command_prefix):
            self.doors.from_mqtt(topic.removeprefix(self.command_prefix), payload)
            if ack is not None:
                ack()
            return
        self.metrics.messages_received.inc()
        if self.sparkplug is not None and topic.startswith(SPARKPLUG_NAMESPACE):
            result = self.sparkplug.parse(topic, payload, received_at)
        else:
            result = self.ingestor.parse(topic, payload, received_at)
        # A machine the pipeline has not accepted gets no series of its own: a flood of
        # made-up names would grow /metrics without end.
        known = self.pipeline.machines
        for rejection in result.rejections:
            label = rejection.machine if rejection.machine in known else REJECTED
            self.metrics.received_of[label].inc(rejection.count)
            self.rejections.record(rejection, label, topic)
        if not result.readings and not result.rows:
            if ack is not None:
                ack()
            return
        # The pipeline counts the readings received when it takes them in, once a cycle
        # per machine: a counter per message here cost paho's thread more than parsing.
        batch = Batch(received_at, result.readings, ack, result.rows, result.machine)
        if self.pipeline.submit(batch):
            return
        # A message's readings are all of its topic's machine.
        count = result.count
        label = result.machine if result.machine in known else REJECTED
        self.metrics.received_of[label].inc(count)
        full = f"queue full ({self.pipeline.queue.full})"
        overloaded = Rejection(RejectReason.OVERLOADED, full, result.machine, count)
        self.rejections.record(overloaded, label, topic)
        if ack is not None:
            ack()

    # -- probes -----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        threads = {
            "pipeline": self.pipeline.healthy,
            "finetuner": self.finetuner.healthy,
            "http": self.http.healthy,
            "mqtt": self.mqtt.network_thread_alive(),
        }
        if self.nats is not None:
            threads["nats"] = self.nats.network_thread_alive()
        return {"healthy": all(threads.values()), "threads": threads}

    def ready(self) -> dict[str, Any]:
        states = Counter(m["state"] for m in self.pipeline.snapshot())
        connected = self.mqtt.connected.is_set()
        subscribed = self.mqtt.subscribed.is_set()
        healthy = self.health()["healthy"]
        report: dict[str, Any] = {
            "ready": connected and subscribed and healthy,
            "healthy": healthy,
            "broker_connected": connected,
            "subscribed": subscribed,
            "broker_error": self.mqtt.last_error,
            "machines": {s.value: states.get(s.value, 0) for s in MachineState},
        }
        if self.nats is not None:
            consuming = self.nats.connected.is_set() and self.nats.subscribed.is_set()
            report["ready"] = report["ready"] and consuming
            report["nats"] = {
                "connected": self.nats.connected.is_set(),
                "consuming": self.nats.subscribed.is_set(),
                "error": self.nats.last_error,
                "replica": self.nats.replica,
                "partitions_owned": self.nats.owned(),
            }
        self.metrics.ready.set(1 if report["ready"] else 0)
        return report

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        configure_torch(self.settings.model.torch_threads)
        sys.setswitchinterval(self.settings.pipeline.switch_interval)
        # A `_created` sample for each counter child is a third of the lines of a plant's
        # /metrics (and series Prometheus keeps): rendering them held the GIL while scoring
        # waited (benchmarks/latency.py).
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.http.start()
        self.finetuner.start()
        lower_priority(self.finetuner, FINETUNER_NICE)
        self.pipeline.start()
        self.mqtt.start()
        if self.nats is not None:
            self.nats.start()
        if self.sparkplug_host is not None:
            self.sparkplug_host.start()
        log.info("aemon_started", http_port=self.http.port, broker=self.settings.mqtt.host)

    def run(self, stop: threading.Event) -> None:
        """Runs until `stop` is set, telling systemd READY and WATCHDOG while healthy."""
        self.start()
        notify("READY=1")
        interval = watchdog_interval()
        intake = self.pipeline.queue
        heap_keeper = heap.AfterBursts(lambda: intake.taken, lambda: intake.fill)
        while not stop.wait(interval or 1.0):
            heap_keeper.poll()
            # Also refreshes aemon_ready: a scrape must not depend on someone probing /readyz.
            ready = self.ready()
            if interval and ready["healthy"]:
                notify("WATCHDOG=1")
        notify("STOPPING=1")
        self.shutdown()

    def stop_input(self) -> None:
        """First step of shutdown: readings still arriving are neither parsed nor acked."""
        self.accepting.clear()
        self.mqtt.pause_input()
        if self.nats is not None:
            self.nats.pause_input()

    def shutdown(self) -> None:
        """Stop input, drain, stop the fitter, say offline, disconnect, close HTTP."""
        started = time.monotonic()
        log.info("aemon_stopping")
        self.stop_input()
        # A fit in progress is abandoned (the machine learns again at restart); cancelling
        # it first keeps it from competing with the drain for the GIL.
        drained = time.monotonic() + self.settings.pipeline.drain_timeout
        self.finetuner.stop(drained)
        self.pipeline.stop(drained)
        self.pipeline.join_until(drained + PIPELINE_GRACE)
        self.finetuner.join_until(time.monotonic() + FINETUNER_GRACE)
        if self.nats is not None:  # the drained readings' acknowledgements go out first
            self.nats.stop(time.monotonic() + MQTT_GRACE)
        if self.sparkplug_host is not None:
            self.sparkplug_host.stop()
        self.mqtt.stop(time.monotonic() + MQTT_GRACE)
        self.http.stop(time.monotonic() + HTTP_GRACE)
        log.info("aemon_stopped", seconds=round(time.monotonic() - started, 2))


def lower_priority(thread: threading.Thread, increment: int) -> None:
    """Adds `increment` to a running thread's nice value (on Linux, nice is per thread).
    Lowering a priority needs no privilege; where it fails anyway, the thread keeps its."""
    try:
        tid = thread.native_id
        if tid is None:
            raise OSError("thread not started")
        nice = min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment)
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:
        log.warning("thread_priority_unchanged", thread=thread.name, error=str(exc))


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec, when systemd asked for a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    return int(usec) / 2e6 if usec else None


def notify(message: str) -> None:
    """sd_notify without a dependency: one datagram to $NOTIFY_SOCKET, if set."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as exc:
            log.warning("sd_notify_failed", error=str(exc))

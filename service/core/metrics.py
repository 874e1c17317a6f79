"""Every Prometheus metric aemon exports, defined once.

Names follow Prometheus conventions: prefix `aemon_`, base units, `_total` on counters, a
`machine` label where the value belongs to one machine, and never a per-reading label.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase

from service import __version__
from service.core.series import Cell, MachineCounter, MachineGauge
from service.core.types import COMMANDS, FitOutcome, MachineState

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FINETUNE_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
FINETUNE_OUTCOMES = tuple(o.value for o in FitOutcome)
SKIP_REASONS = ("maintenance", "off")
COMMAND_OUTCOMES = ("ok", "refused")
NEW_NORMAL_OUTCOMES = ("promoted", "refused")

# The `machine` label of readings that have no accepted machine (an unknown topic, a machine
# past ingest.max_machines or refused by the allowlist): one series for all of them, so a
# flood of made-up names cannot grow /metrics. Ingest refuses it as a machine name.
REJECTED = "_rejected"


class ByMachine:
    """A `machine`-labelled metric's series per machine, looked up once. `labels()` builds
    a key on every call, which on the per-message and per-cycle paths costs more than the
    counting itself. A series appears on first use, as with `labels()`."""

    def __init__(self, metric: MachineCounter | MachineGauge) -> None:
        self.metric = metric
        self._children: dict[str, Cell] = {}

    def __getitem__(self, machine: str) -> Cell:
        child = self._children.get(machine)
        if child is None:
            child = self._children[machine] = self.metric.labels(machine=machine)
        return child

    def forget(self, machine: str) -> None:
        self._children.pop(machine, None)


class Tally:
    """A counter without labels that one thread alone increments: a plain int, exposed as a
    counter at scrape time. `Counter.inc` takes a lock, which cost paho's network thread a
    few percent of its time at one increment per message."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.value = 0
        registry.register(self)

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.value)


class Metrics:
    """All metrics of one daemon, registered in `registry` (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.registry = registry
        Info("aemon_build", "Version of the running daemon.", registry=r).info(
            {"version": __version__}
        )
        # Counted on paho's thread, as each message arrives.
        self.messages_received = Tally(
            "aemon_messages_received_total", "MQTT messages handed to ingest.", r
        )
        self.readings_received = MachineCounter(
            "aemon_readings_received_total",
            "Readings received: every reading parsed from a message, plus one for each message "
            f"rejected whole. received = accepted + rejected, per machine label ({REJECTED}: "
            "readings of no accepted machine).",
            ["machine"],
            registry=r,
        )
        self.readings_accepted = MachineCounter(
            "aemon_readings_accepted_total",
            "Readings taken onto a machine's time grid.",
            ["machine"],
            registry=r,
        )
        self.readings_rejected = MachineCounter(
            "aemon_readings_rejected_total",
            f"Readings refused, by reason (machine is {REJECTED} for readings of no accepted "
            "machine).",
            ["machine", "reason"],
            registry=r,
        )
        self.windows_scored = MachineCounter(
            "aemon_windows_scored_total", "Windows scored by a model.", ["machine"], registry=r
        )
        self.windows_unscored = MachineCounter(
            "aemon_windows_unscored_total",
            "Windows dropped unscored: more came in while a machine's first model was being "
            "fitted than its backlog (learning.windows) holds.",
            ["machine"],
            registry=r,
        )
        self.anomaly_score = MachineGauge(
            "aemon_anomaly_score",
            "Reconstruction error of the machine's latest window (higher is more anomalous).",
            ["machine"],
            registry=r,
        )
        self.anomaly_threshold = MachineGauge(
            "aemon_anomaly_threshold",
            "Score above which a window counts as anomalous.",
            ["machine"],
            registry=r,
        )
        self.alert_firing = MachineGauge(
            "aemon_alert_firing", "1 while the machine has a firing alert.", ["machine"], registry=r
        )
        self.alerts_raised = MachineCounter(
            "aemon_alerts_raised_total", "Alert episodes raised.", ["machine"], registry=r
        )
        self.scoring_latency = Histogram(
            "aemon_scoring_latency_seconds",
            "Time to score one pipeline cycle's windows: one model call per group of machines "
            "whose models have one shape, one call per machine for the others.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pipeline_lag = Histogram(
            "aemon_pipeline_lag_seconds",
            "From the arrival at the daemon of a cycle's oldest message to the scores of the "
            "windows the cycle completed (one observation a cycle).",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.pipeline_cycle = Histogram(
            "aemon_pipeline_cycle_seconds",
            "Duration of one pipeline cycle: taking in readings, windowing, scoring, alerts "
            "and the fine-tune requests it hands over. A long one delays every alert.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.last_reading_timestamp = MachineGauge(
            "aemon_last_reading_timestamp_seconds",
            "Event time of the newest reading accepted for the machine (Unix seconds).",
            ["machine"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "aemon_queue_depth", "Messages waiting for the pipeline thread.", registry=r
        )
        self.queue_readings = Gauge(
            "aemon_queue_readings",
            "Readings waiting for the pipeline thread (bounded by ingest.max_queued_readings).",
            registry=r,
        )
        self.machine_state = MachineGauge(
            "aemon_machine_state",
            "1 for the state the machine is in (discovering, learning, scoring).",
            ["machine", "state"],
            registry=r,
        )
        self.model_version = MachineGauge(
            "aemon_model_version",
            "Version of the model scoring the machine.",
            ["machine"],
            registry=r,
        )
        self.finetune_runs = MachineCounter(
            "aemon_finetune_runs_total",
            # Dashboards' tests read the outcomes from the parenthesis that ends this help.
            f"Model fits and fine-tunes by outcome ({', '.join(FINETUNE_OUTCOMES)}).",
            ["machine", "outcome"],
            registry=r,
        )
        self.finetune_duration = Histogram(
            "aemon_finetune_duration_seconds",
            "Duration of a model fit or fine-tune.",
            buckets=FINETUNE_BUCKETS,
            registry=r,
        )
        self.finetune_windows_excluded = MachineCounter(
            "aemon_finetune_windows_excluded_total",
            "Windows kept out of fine-tuning because they were in or near an alert episode.",
            ["machine"],
            registry=r,
        )
        self.drift_events = MachineCounter(
            "aemon_drift_events_total",
            "Changes in the level of the machine's scores (ADWIN); a rise outside alerts "
            "requests an early fine-tune.",
            ["machine"],
            registry=r,
        )
        self.model_load_failures = MachineCounter(
            "aemon_model_load_failures_total",
            "Saved model versions that could not be loaded (a corrupt or missing file, "
            "unreadable metadata): the newest older usable version is used instead, or the "
            "machine learns anew.",
            ["machine"],
            registry=r,
        )
        self.broker_connected = Gauge(
            "aemon_broker_connected", "1 while connected to the MQTT broker.", registry=r
        )
        self.ready = Gauge("aemon_ready", "1 while /readyz answers ready.", registry=r)
        self._add_scale_out(r)
        self.thread_failures = Counter(
            "aemon_thread_failures_total",
            "Worker threads that died of an exception (the daemon turns unhealthy).",
            ["thread"],
            registry=r,
        )
        self.callback_errors = Counter(
            "aemon_mqtt_callback_errors_total",
            "Exceptions caught in MQTT callbacks (kept from killing paho's network thread).",
            registry=r,
        )
        self.window_gaps = MachineCounter(
            "aemon_window_gaps_total",
            "Times a machine's window restarted because a sensor went silent past max_stale: "
            "lost readings (e.g. a broker's queue limit dropping QoS 0 bursts) or a dead sensor.",
            ["machine"],
            registry=r,
        )
        self.alerts_published = Counter(
            "aemon_alert_messages_published_total",
            "Messages handed to the MQTT client for the output topics: alerts, events and "
            "command results (QoS 1).",
            registry=r,
        )

        self.alert_acknowledged = MachineGauge(
            "aemon_alert_acknowledged",
            "1 while the machine's firing alert is acknowledged by an operator.",
            ["machine"],
            registry=r,
        )
        self.windows_skipped = MachineCounter(
            "aemon_windows_skipped_total",
            "Windows neither scored nor learnt from, by reason: maintenance (a window of the "
            "machine's maintenance) or off (the machine did not run).",
            ["machine", "reason"],
            registry=r,
        )
        self.false_alarms = MachineCounter(
            "aemon_false_alarms_total",
            "Alerts an operator resolved as false alarms (their windows become normal data).",
            ["machine"],
            registry=r,
        )
        self.sparkplug_messages = Counter(
            "aemon_sparkplug_messages_total",
            "Sparkplug B events by kind: birth, node_death, device_death, seq_gap, "
            "rebirth_requested, ignored_metric (null or non-numeric).",
            ["kind"],
            registry=r,
        )
        self.new_normals = MachineCounter(
            "aemon_new_normals_total",
            "Firing alerts whose windows settled into a steady state the model then "
            "re-baselined on, by the gate's outcome: promoted (the alert resolves as "
            "new_normal) or refused (it fires on).",
            ["machine", "outcome"],
            registry=r,
        )
        self.commands = Counter(
            "aemon_commands_total",
            "Operator commands by command and outcome (ok, refused; command invalid: one that "
            "could not be read).",
            ["command", "outcome"],
            registry=r,
        )
        for command in (*COMMANDS, "invalid"):
            for outcome in COMMAND_OUTCOMES:
                self.commands.labels(command=command, outcome=outcome)
        self.machines_discovered = Counter(
            "aemon_machines_discovered_total",
            "Machines first seen after the first discovery period (a new name on the input "
            "topics: a new machine, or a typo in a topic).",
            registry=r,
        )
        self.machine_limit_reached = Counter(
            "aemon_machine_limit_reached_total",
            "Times a new machine was refused while ingest.max_machines machines were known, "
            "counted once each time the limit is reached (its readings are rejected as "
            f"unknown_topic under machine {REJECTED}).",
            registry=r,
        )
        # The hot paths' per-machine children (see ByMachine).
        self.received_of = ByMachine(self.readings_received)
        self.accepted_of = ByMachine(self.readings_accepted)
        self.scored_of = ByMachine(self.windows_scored)
        self.score_of = ByMachine(self.anomaly_score)
        self.firing_of = ByMachine(self.alert_firing)
        self.last_reading_of = ByMachine(self.last_reading_timestamp)

    def _add_scale_out(self, r: CollectorRegistry) -> None:
        """The NATS input's metrics (input.kind = nats)."""
        self.nats_connected = Gauge(
            "aemon_nats_connected", "1 while connected to NATS (input.kind = nats).", registry=r
        )
        self.partitions_owned = Gauge(
            "aemon_partitions_owned",
            "JetStream partitions this replica is pinned to, whose machines it scores.",
            registry=r,
        )
        self.partition_moves = Counter(
            "aemon_partition_moves_total",
            "Partitions this replica took over (`taken`: NATS pinned it to this replica) or "
            "gave up (`lost`: pinned to another, its machines released here).",
            ["direction"],
            registry=r,
        )
        self.shared_model_failures = Counter(
            "aemon_shared_model_failures_total",
            "Copies of a model version to (`save`) or from (`fetch`) NATS's object store that "
            "failed: the replica goes on with its own state directory.",
            ["operation"],
            registry=r,
        )
        self.redeliveries = Counter(
            "aemon_nats_redeliveries_total",
            "Messages JetStream delivered again (not acknowledged in nats.ack_wait, e.g. held "
            "by a replica that crashed); what was taken in already is rejected as duplicate.",
            registry=r,
        )

    def add_machine(self, machine: str) -> None:
        """Creates the machine's counters at 0, so that rate() and increase() see their
        first increment (a series that appears at 1 shows no increase)."""
        for counter in (
            self.readings_received,
            self.readings_accepted,
            self.windows_scored,
            self.windows_unscored,
            self.alerts_raised,
            self.finetune_windows_excluded,
            self.drift_events,
            self.model_load_failures,
            self.window_gaps,
        ):
            counter.labels(machine=machine)
        for outcome in FINETUNE_OUTCOMES:
            self.finetune_runs.labels(machine=machine, outcome=outcome)
        self.false_alarms.labels(machine=machine)
        for outcome in NEW_NORMAL_OUTCOMES:
            self.new_normals.labels(machine=machine, outcome=outcome)
        for reason in SKIP_REASONS:
            self.windows_skipped.labels(machine=machine, reason=reason)

    def remove_machine(self, machine: str) -> None:
        """Removes every series of `machine` (a forgotten machine leaves none behind)."""
        for cached in (
            self.received_of,
            self.accepted_of,
            self.scored_of,
            self.score_of,
            self.firing_of,
            self.last_reading_of,
        ):
            cached.forget(machine)
        for family in self.registry.collect():
            metric = self._by_name.get(family.name)
            if metric is None:
                continue
            names = metric._labelnames
            for sample in family.samples:
                if sample.labels.get("machine") == machine:
                    with contextlib.suppress(KeyError):
                        metric.remove(*(sample.labels[n] for n in names))

    @property
    def _by_name(self) -> dict[str, MetricWrapperBase]:
        """The machine-labelled metrics by family name."""
        found: dict[str, MetricWrapperBase] = {}
        for value in vars(self).values():
            if isinstance(value, MetricWrapperBase) and "machine" in value._labelnames:
                found[value._name] = value
        return found

    def set_machine_state(self, machine: str, state: MachineState) -> None:
        for s in MachineState:
            self.machine_state.labels(machine=machine, state=s.value).set(1 if s == state else 0)

"""Settings sections of the plant side: the broker, HTTP, state, ingest, windows,
machines, discovery, alerts, the pipeline and logs (`service.core.config` assembles them)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MqttSettings(Section):
    """The MQTT broker: connection, credentials, TLS, input topics, output topic prefix."""

    host: str = Field("127.0.0.1", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    topics: tuple[str, ...] = Field(
        ("plant/{machine}/{sensor}", "plant/{machine}"),
        description="Input topic templates; {machine} and {sensor} each match one topic level.",
    )
    client_id: str = Field("aemon", description="MQTT client id (unique per replica).")
    keepalive: int = Field(30, ge=5, description="Keepalive interval, seconds.")
    qos: Literal[0, 1] = Field(1, description="QoS of the input subscriptions.")
    clean_start: bool = Field(
        False, description="False keeps the broker session (and queued readings) across restarts."
    )
    session_expiry: int = Field(
        3600, ge=0, description="Seconds the broker keeps the session while aemon is away."
    )
    username: str | None = Field(None, description="Broker user name.")
    password: SecretStr | None = Field(None, description="Broker password (prefer password_file).")
    password_file: Path | None = Field(None, description="File holding the broker password.")
    tls: bool = Field(False, description="Connect with TLS.")
    ca_file: Path | None = Field(None, description="CA bundle that signs the broker certificate.")
    cert_file: Path | None = Field(None, description="Client certificate for mutual TLS.")
    key_file: Path | None = Field(None, description="Client key for mutual TLS.")
    reconnect_min: float = Field(1.0, gt=0, description="First reconnect delay, seconds.")
    reconnect_max: float = Field(30.0, gt=0, description="Longest reconnect delay, seconds.")
    topic_prefix: str = Field("aemon", description="Prefix of the output topics.")

    def resolved_password(self) -> str | None:
        """The password from `password_file` if set, else from `password`."""
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return self.password.get_secret_value() if self.password is not None else None


class HttpSettings(Section):
    """The HTTP server: metrics, health and readiness probes, machines, a status page."""

    host: str = Field("0.0.0.0", description="Address the HTTP server binds.")
    port: int = Field(9108, ge=0, le=65535, description="Port of every HTTP endpoint.")
    command_token_file: Path | None = Field(
        None,
        description="File holding the bearer token that POST /api/machines/<machine>/commands "
        "requires (and `aemon machine` sends). Unset: commands over HTTP are refused (403); "
        "the read-only endpoints stay open either way.",
    )


class StateSettings(Section):
    """Where models and their versions are kept on disk."""

    dir: Path = Field(Path("/var/lib/aemon"), description="Models and their versions.")


class IngestSettings(Section):
    """Limits on what is taken in: payload size, clock skew, queue, machines."""

    max_payload_bytes: int = Field(
        65536, ge=64, description="Larger payloads are rejected as too_large before parsing."
    )
    future_tolerance: float = Field(
        300.0, gt=0, description="Readings this far ahead of the wall clock are rejected (s)."
    )
    queue_size: int = Field(
        20000, ge=1, description="Messages that may wait for the pipeline before overloaded."
    )
    max_queued_readings: int = Field(
        1_000_000,
        ge=1,
        description="Readings that may wait for the pipeline before overloaded: the queue's "
        "memory budget (about 70 bytes a reading of a per-machine batch, 370 bytes a "
        "per-sensor message; the default holds about 70 MB, two minutes of 1,000 machines "
        "x 8 sensors at 1 Hz). A message larger than the budget is taken into an empty queue.",
    )
    max_machines: int = Field(10000, ge=1, description="Machines discovered at the most.")


class WindowSettings(Section):
    """The time grid each machine's readings are aligned onto, and its windows."""

    period: float = Field(1.0, gt=0, description="Default sample period of the grid, seconds.")
    length: int = Field(30, ge=2, description="Grid steps in one window.")
    stride: int = Field(1, ge=1, description="Grid steps between consecutive windows.")
    max_stale: float = Field(
        5.0, gt=0, description="A sensor's last value is held this long; older is a gap (s)."
    )
    lateness: float = Field(
        2.0, ge=0, description="Out-of-order tolerance: how far behind the newest reading (s)."
    )


class RunningRule(Section):
    """When a machine runs: one sensor above and/or below a level (e.g. current above 0.5)."""

    sensor: str = Field(description="The sensor that tells whether the machine runs.")
    above: float | None = Field(None, description="Running while the sensor is above this.")
    below: float | None = Field(None, description="Running while the sensor is below this.")

    @model_validator(mode="after")
    def _a_bound(self) -> RunningRule:
        if self.above is None and self.below is None:
            raise ValueError("a running rule needs `above` or `below`")
        return self


class MachineSettings(Section):
    """A declared machine: its sensors fixed, without discovery."""

    sensors: tuple[str, ...] = Field(description="The machine's sensors, in model order.")
    period: float | None = Field(None, gt=0, description="Sample period (default window.period).")
    running: RunningRule | None = Field(
        None,
        description="When the machine runs; a window whose last value of the sensor is "
        "outside the rule is `off`: not scored, not learnt. Unset: `off.auto` decides.",
    )


class OffSettings(Section):
    """Machines that are switched off or idle are not scored as if they ran."""

    auto: bool = Field(
        True,
        description="Where a machine has no `running` rule: a window is off when every "
        "sensor rests (moves less than `flat_fraction` of its learned spread) over three "
        "steps at its start or end and one of them is away from its running level there (a "
        "stopped machine's current, speed, flow), so the windows of a stop or a start are "
        "not scored either. Held values or a frozen feed at the running level are scored.",
    )
    flat_fraction: float = Field(
        0.02,
        gt=0,
        lt=1,
        description="A sensor rests when its range in a window is below this "
        "share of its spread in the learning windows.",
    )


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class MaintenanceWindow(Section):
    """A recurring maintenance window: no alert is raised and nothing is learnt in it."""

    machines: tuple[str, ...] = Field(
        ("*",), description="Machine name patterns (shell style: `pump-*`) it applies to."
    )
    weekdays: tuple[Weekday, ...] = Field(
        ("mon", "tue", "wed", "thu", "fri", "sat", "sun"), description="Days it starts on (UTC)."
    )
    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="Start, HH:MM UTC.")
    hours: float = Field(gt=0, le=168, description="Length, hours.")
    reason: str = Field("scheduled maintenance", description="Said in the events and logs.")


class DiscoverySettings(Section):
    """Machines not declared: found from the topics, their sensors fixed at first."""

    enabled: bool = Field(True, description="Accept machines that are not declared.")
    period: float = Field(
        30.0, ge=0, description="Event-time seconds during which a new machine's sensors are seen."
    )
    mode: Literal["open", "allowlist"] = Field(
        "open",
        description="open: any machine on the input topics is taken (one first seen after "
        "`period` past start-up is logged at warning level and published as a "
        "machine_discovered event); allowlist: only declared machines and names matching "
        "`allow`, the others rejected as unknown_topic and counted.",
    )
    allow: tuple[str, ...] = Field(
        (), description="Machine name patterns (shell style: `pump-*`) the allowlist takes."
    )


class AlertSettings(Section):
    """When an alert is raised, updated and resolved: the k-of-n rule."""

    k: int = Field(3, ge=1, description="Anomalous windows among the last n that raise an alert.")
    n: int = Field(5, ge=1, description="Windows the k-of-n rule looks at.")
    m: int = Field(10, ge=1, description="Consecutive clean windows that resolve an alert.")
    top_sensors: int = Field(3, ge=1, description="Contributing sensors named in an alert.")
    update_interval: float = Field(
        60.0, gt=0, description="Event-time seconds between updates of a firing alert."
    )
    stale_after: float = Field(
        300.0,
        ge=0,
        description="Wall-clock seconds without an accepted reading after which a machine is "
        "`stale`; a firing alert of a stale machine is resolved with resolution no_data. "
        "0: never stale.",
    )

    @model_validator(mode="after")
    def _k_within_n(self) -> AlertSettings:
        if self.k > self.n:
            raise ValueError("alert.k must not exceed alert.n")
        return self


class PipelineSettings(Section):
    """The pipeline thread's cycle, its shutdown drain, and the GIL switch interval."""

    max_batch: int = Field(5000, ge=1, description="Messages taken from the queue per cycle.")
    max_batch_readings: int = Field(
        20_000,
        ge=1,
        description="Readings taken from the queue per cycle (past the first message): bounds "
        "the windows a cycle cuts and scores at once, and so the memory of a flood of large "
        "batches (benchmarks/overload.py, 50 machines: peak RSS 907 MiB at 100,000, 584 MiB "
        "at 20,000, at the same rate).",
    )
    min_cycle: float = Field(
        0.005,
        ge=0,
        le=1.0,
        description="Seconds a pipeline cycle lasts at least: a shorter one sleeps the rest, "
        "so that under load each cycle takes many messages and scores many windows in one "
        "model call, and paho's thread runs alone meanwhile. Adds up to this much latency "
        "(20 ms gave the same throughput as 5 ms and alert latency p50 34 ms against 9 ms).",
    )
    drain_timeout: float = Field(5.0, ge=0, description="Shutdown: seconds to drain the queue.")
    switch_interval: float = Field(
        0.00025,
        gt=0,
        le=0.1,
        description="sys.setswitchinterval, seconds: how long a thread keeps the GIL while "
        "another waits. Each hand-off to the pipeline (every torch call, every queue wait) "
        "costs up to this while paho's thread, a /metrics scrape or the fine-tuner runs "
        "Python: at 1 ms a scrape of 1,000 machines made scoring calls 10 - 30 times slower "
        "for its duration (Python's default is 5 ms).",
    )


class LogSettings(Section):
    """Log level and format."""

    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="json for journald/Kubernetes; auto picks console on a terminal."
    )


class HomeAssistantSettings(Section):
    """Home Assistant's MQTT discovery: each machine appears as a device of three entities."""

    enabled: bool = Field(
        False,
        description="Publish retained discovery messages under `prefix` and each machine's "
        "state on `<mqtt.topic_prefix>/machines/<machine>`, so Home Assistant shows every "
        "machine as a device: an anomaly binary sensor, its score relative to its threshold "
        "and its state.",
    )
    prefix: str = Field(
        "homeassistant",
        min_length=1,
        pattern=r"^[^#+]+$",
        description="Home Assistant's discovery prefix (its MQTT integration's setting).",
    )
    update_interval: float = Field(
        30.0,
        gt=0,
        description="Wall-clock seconds between updates of a machine's state topic while "
        "nothing but its score changed; a change of state or alert is published at once.",
    )


class SparkplugSettings(Section):
    """Sparkplug B input: aemon reads the groups' edge nodes as a host application."""

    enabled: bool = Field(
        False, description="Also read Sparkplug B (spBv1.0) messages of the groups below."
    )
    groups: tuple[str, ...] = Field(
        (), description="Sparkplug group ids to subscribe to (`spBv1.0/<group>/#`)."
    )
    host_id: str = Field(
        "aemon",
        pattern=r"^[^/#+]*$",
        description="aemon's Sparkplug host application id: it publishes its STATE "
        "(`spBv1.0/STATE/<host_id>`, online retained, offline as the will of a connection of "
        "its own) for edge nodes that wait for a primary host. Unique per broker; empty: "
        "no STATE.",
    )
    rebirth_interval: float = Field(
        10.0,
        gt=0,
        description="Seconds between two rebirth requests (NCMD Node Control/Rebirth) to one "
        "node, after a seq gap or data before a birth.",
    )
    machines: dict[str, str] = Field(
        default_factory=dict,
        description="Machine names by Sparkplug path, `group/node/device` (or `group/node` for "
        "a node's own metrics); unmapped paths are named with dots, `group.node.device`.",
    )

    @model_validator(mode="after")
    def _groups_when_enabled(self) -> SparkplugSettings:
        if self.enabled and not self.groups:
            raise ValueError("sparkplug.groups must name at least one group when enabled")
        for group in self.groups:
            if not group or any(c in group for c in "/#+"):
                raise ValueError(f"sparkplug group {group!r} must be one topic level")
        return self

"""Settings: a TOML file (`--config` or `AEMON_CONFIG`), overridden by `AEMON_*` env vars.

Nested fields use `__` in env names: `AEMON_MQTT__PORT=1884`. Every section is frozen and
refuses unknown keys, so a typo in a deployment's config fails at start, not at 3 a.m.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


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


class MachineSettings(Section):
    """A declared machine: its sensors fixed, without discovery."""

    sensors: tuple[str, ...] = Field(description="The machine's sensors, in model order.")
    period: float | None = Field(None, gt=0, description="Sample period (default window.period).")


class DiscoverySettings(Section):
    """Machines not declared: found from the topics, their sensors fixed at first."""

    enabled: bool = Field(True, description="Accept machines that are not declared.")
    period: float = Field(
        30.0, ge=0, description="Event-time seconds during which a new machine's sensors are seen."
    )


class ModelSettings(Section):
    """The autoencoder family, its training, and how a window's error is scored."""

    kind: str = Field("conv", description="Autoencoder family (dense, conv, lstm, vae).")
    params: dict[str, int | float] = Field(
        default_factory=dict, description="Family config fields, e.g. channels = 32 (conv)."
    )
    epochs: int = Field(60, ge=1, description="Training epochs of a fit from scratch.")
    batch_size: int = Field(64, ge=1, description="Training batch size.")
    learning_rate: float = Field(2e-3, gt=0, description="Adam learning rate.")
    denoise_std: float = Field(0.0, ge=0, description="Denoising: input noise std in scaled units.")
    sparse_l1: float = Field(0.0, ge=0, description="Sparse: L1 weight on the code.")
    offset_weight: float = Field(
        0.3,
        ge=0,
        description="Weight of a persistent offset in a sensor's residual: its window mean, "
        "squared and times the window length, is added with this weight to the mean squared "
        "error. A fault (a closed valve, a blockage) shifts a level and holds it; noise does "
        "not. 0 scores the plain mean squared error.",
    )
    drift_widening: float = Field(
        0.5,
        ge=0,
        description="A sensor whose window means spread rho times more while learning than its "
        "noise explains (relative to the machine's steadiest sensor) is a slow state, such as a "
        "temperature: learning saw only part of its range, so its scale is widened by "
        "rho ** drift_widening. 0 keeps the learning spread.",
    )
    offset_discount: float = Field(
        1.0,
        ge=0,
        description="A sensor whose window means spread rho times more while learning than the "
        "machine's median sensor's (relative to their noise) has the held offsets of its "
        "residual counted rho ** -offset_discount times: a slow state that wanders (a "
        "temperature) holds offsets in normal operation, a sensor that held its level (a flow, "
        "a pressure) does not. 0 counts every sensor's offsets alike.",
    )
    drift_widening_max: float = Field(
        10.0,
        ge=1,
        description="The most a scale is widened: a slow state that runs far outside its "
        "learning range (an overheating bearing) must still raise its score.",
    )
    seed: int = Field(0, description="Seed of weight init and training order.")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads (2-core boxes: 1).")


class ThresholdSettings(Section):
    """How a machine's threshold is calibrated on the scores of normal windows."""

    method: Literal["quantile", "spot"] = Field(
        "quantile",
        description="Calibration on normal scores: quantile, or spot (a GPD tail fit, "
        "Siffer et al. 2017); both are multiplied by margin.",
    )
    quantile: float = Field(0.995, gt=0.5, lt=1, description="Quantile of held-out normal scores.")
    margin: float = Field(2.0, ge=1, description="Threshold = quantile x margin.")
    holdout: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="Newest share of the learning windows, held out from a first model (with "
        "a gap of one window length) to calibrate the threshold on; the model kept then "
        "trains on all of them.",
    )
    spot_risk: float = Field(
        1e-4, gt=0, lt=0.5, description="spot: chance that a normal window scores above z_q."
    )
    spot_level: float = Field(
        0.98,
        gt=0.5,
        lt=1,
        description="spot: quantile whose excesses are fitted (lowered to "
        "keep spot_min_peaks peaks).",
    )
    spot_min_peaks: int = Field(
        10, ge=5, description="spot: fewest peaks for a fit; fewer falls back to the quantile."
    )


class LearningSettings(Section):
    """How a new machine learns its first model."""

    windows: int = Field(
        600,
        ge=20,
        description="Windows of a new machine taken as normal to fit its first model. The "
        "newest threshold.holdout of them calibrate the threshold, so they should span the "
        "machine's operating points several times over.",
    )


class FinetuneSettings(Section):
    """Fine-tuning on recent clean windows, its gate, and drift on the scores."""

    enabled: bool = Field(True, description="Fine-tune each machine's model on recent normal data.")
    interval: float = Field(
        3600.0, gt=0, description="Event-time seconds between fine-tunes of a machine."
    )
    min_windows: int = Field(
        100, ge=10, description="Fewer new clean windows than this: the run is too_few_windows."
    )
    admit_every: int = Field(
        10, ge=1, description="Keep every n-th clean window (neighbours overlap almost fully)."
    )
    recent_windows: int = Field(400, ge=20, description="Recent clean windows kept per machine.")
    reservoir_windows: int = Field(
        200,
        ge=0,
        description="Older normal windows kept by reservoir sampling, against forgetting.",
    )
    margin_windows: int = Field(
        120, ge=0, description="Windows before and after an alert episode kept out of training."
    )
    episode_windows: int = Field(
        200, ge=0, description="Anomalous windows of recent episodes the gate checks against."
    )
    episode_factor: float = Field(
        2.0,
        ge=1,
        description="Only windows scoring this many times the threshold are kept as episode "
        "windows for the gate, so a marginal false alert cannot lock the model.",
    )
    epochs: int = Field(20, ge=1, description="Epochs of one fine-tune.")
    tolerance: float = Field(
        0.1, ge=0, description="Gate: candidate holdout error may exceed the current by this share."
    )
    episode_recall: float = Field(
        0.9, gt=0, le=1, description="Gate: share of episode windows the candidate must flag."
    )
    drift_detection: bool = Field(
        True,
        description="Watch each machine's scores (in units of its threshold) with ADWIN; a "
        "rise in their level requests a fine-tune ahead of the interval. The request waits "
        "margin_windows windows and is dropped if an alert starts meanwhile (the rise was a "
        "fault), as is one made during an alert episode or its margin.",
    )
    drift_min_spacing: float = Field(
        900.0,
        gt=0,
        description="Event-time seconds from a machine's last fine-tune before a drift may "
        "request the next one.",
    )
    drift_delta: float = Field(
        0.002,
        gt=0,
        lt=1,
        description="ADWIN's confidence: smaller detects fewer, larger changes.",
    )
    threshold_step: float = Field(
        1.25,
        ge=1,
        description="A promoted model's threshold is calibrated like a first fit's (the "
        "quantile of its held-out recent clean windows, never below that of its training "
        "windows) and may rise above the current one by at most this factor per promotion. "
        "It never falls: clean windows are those that scored under the current threshold, a "
        "sample cut off at it, so their quantile is biased low; and normal drift goes on "
        "between fine-tunes. Only a fit from scratch (learning, aemon train) lowers it.",
    )
    threshold_ceiling: float = Field(
        2.0,
        ge=1,
        description="A promoted threshold never exceeds this multiple of the threshold of "
        "the fit from scratch the model descends from, so successive fine-tunes cannot "
        "ratchet it up without bound (a slow fault that raised it would let more of itself "
        "in as clean). Reaching it is logged (finetune_threshold_capped).",
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

    @model_validator(mode="after")
    def _k_within_n(self) -> AlertSettings:
        if self.k > self.n:
            raise ValueError("alert.k must not exceed alert.n")
        return self


class PipelineSettings(Section):
    """The pipeline thread's cycle, its shutdown drain, and the GIL switch interval."""

    max_batch: int = Field(5000, ge=1, description="Messages taken from the queue per cycle.")
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


class Settings(BaseSettings):
    """All of aemon's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="AEMON_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    window: WindowSettings = Field(default_factory=WindowSettings)
    discovery: DiscoverySettings = Field(default_factory=DiscoverySettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    threshold: ThresholdSettings = Field(default_factory=ThresholdSettings)
    learning: LearningSettings = Field(default_factory=LearningSettings)
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)
    alert: AlertSettings = Field(default_factory=AlertSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    machines: dict[str, MachineSettings] = Field(
        default_factory=dict, description="Declared machines; others are discovered from topics."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first so a deployment can override any value of the file.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


class ConfigError(Exception):
    """The configuration cannot be used; the message says why."""


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Settings from `path` (or `AEMON_CONFIG`), env vars, and `overrides` (highest)."""
    chosen = path if path is not None else os.environ.get("AEMON_CONFIG")
    if chosen is None:
        return Settings(**overrides)
    toml_path = Path(chosen)
    if not toml_path.is_file():
        raise ConfigError(f"config file {toml_path} does not exist")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=toml_path)

    return _FromFile(**overrides)

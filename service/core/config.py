"""Settings: a TOML file (`--config` or `AEMON_CONFIG`), overridden by `AEMON_*` env vars.

Nested fields use `__` in env names: `AEMON_MQTT__PORT=1884`. Every section is frozen and
refuses unknown keys, so a typo in a deployment's config fails at start, not at 3 a.m.
The sections live in `service.core.sections` and `service.core.model_settings`.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from service.core.config_errors import describe, describe_env_json
from service.core.model_settings import (
    FinetuneSettings,
    LearningSettings,
    ModelSettings,
    ThresholdSettings,
)
from service.core.nats_settings import InputSettings, NatsSettings
from service.core.sections import (
    AlertSettings,
    DiscoverySettings,
    HomeAssistantSettings,
    HttpSettings,
    IngestSettings,
    LogSettings,
    MachineSettings,
    MaintenanceWindow,
    MqttSettings,
    OffSettings,
    PipelineSettings,
    RunningRule,
    Section,
    SparkplugSettings,
    StateSettings,
    WindowSettings,
)

__all__ = [
    "AlertSettings",
    "ConfigError",
    "DiscoverySettings",
    "FinetuneSettings",
    "HomeAssistantSettings",
    "HttpSettings",
    "IngestSettings",
    "InputSettings",
    "LearningSettings",
    "LogSettings",
    "MachineSettings",
    "MaintenanceWindow",
    "ModelSettings",
    "MqttSettings",
    "NatsSettings",
    "OffSettings",
    "PipelineSettings",
    "RunningRule",
    "Section",
    "Settings",
    "SparkplugSettings",
    "StateSettings",
    "ThresholdSettings",
    "WindowSettings",
    "load_settings",
]


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
    off: OffSettings = Field(default_factory=OffSettings)
    homeassistant: HomeAssistantSettings = Field(default_factory=HomeAssistantSettings)
    sparkplug: SparkplugSettings = Field(default_factory=SparkplugSettings)
    input: InputSettings = Field(default_factory=InputSettings)
    nats: NatsSettings = Field(default_factory=NatsSettings)
    maintenance: tuple[MaintenanceWindow, ...] = Field(
        (), description="Recurring maintenance windows ([[maintenance]] tables)."
    )
    machines: dict[str, MachineSettings] = Field(
        default_factory=dict, description="Declared machines; others are discovered from topics."
    )

    @model_validator(mode="after")
    def _sparkplug_only_over_mqtt(self) -> Settings:
        if self.sparkplug.enabled and self.input.kind == "nats":
            raise ValueError(
                "sparkplug.enabled needs input.kind = mqtt: Sparkplug B is read from the "
                "MQTT broker, and each replica would read every node"
            )
        return self

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
    """The configuration cannot be used; the message says why, one line per problem
    (`a.toml:3: mqtt.port: expected an integer from 1 to 65535, given "abc"`)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Settings from `path` (or `AEMON_CONFIG`), env vars, and `overrides` (highest).
    Raises `ConfigError` naming the file, line, key, environment variable of each problem."""
    chosen = path if path is not None else os.environ.get("AEMON_CONFIG")
    if chosen is None:
        return _validated(Settings, None, overrides)
    toml_path = Path(chosen)
    if not toml_path.is_file():
        raise ConfigError([f"config file {toml_path} does not exist"])
    try:
        tomllib.loads(toml_path.read_text())
    except OSError as exc:
        raise ConfigError([f"{toml_path}: cannot read: {exc.strerror or exc}"]) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([toml_syntax(toml_path, exc)]) from exc

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=toml_path)

    return _validated(_FromFile, toml_path, overrides)


def _validated(cls: type[Settings], file: Path | None, overrides: dict[str, Any]) -> Settings:
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe(exc, cls, file)) from exc
    except SettingsError as exc:  # a list or table variable that is not JSON
        raise ConfigError(describe_env_json(cls, exc)) from exc


def toml_syntax(path: Path, exc: ValueError) -> str:
    """`a.toml:3:7: not valid TOML: Expected '=' after a key in a key/value pair`."""
    message = str(exc)
    at = re.search(r" \(at line (\d+), column (\d+)\)$", message)
    if at is None:
        return f"{path}: not valid TOML: {message}"
    return f"{path}:{at[1]}:{at[2]}: not valid TOML: {message[: at.start()]}"

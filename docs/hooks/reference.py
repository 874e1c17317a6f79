"""MkDocs hook: the configuration and metrics references, generated from the code at every
build, so that they cannot drift from it.

- `reference/configuration.md` walks the settings model tree (`service.core.config.Settings`):
  every section and field, with its TOML key, type, default, allowed range, environment
  variable and description.
- `reference/metrics.md` instantiates `Metrics(CollectorRegistry())` and walks the registry:
  every metric's exposed name, type, labels and help.

The pages exist only in the built site (`File.generated`), never in `docs/` on disk.
`tests/unit/test_docs.py` calls the functions below directly.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import annotated_types
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from service.core.config import Settings
from service.core.metrics import FINETUNE_OUTCOMES, Metrics
from service.core.types import MachineState, RejectReason

GENERATED_NOTE = (
    "<!-- Generated at build time by docs/hooks/reference.py from {source}: "
    "edit the code, not this page. -->"
)
# Placeholder for the name of a declared machine in key paths and variable names.
MACHINE_KEY = "<name>"


# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One leaf of the settings tree."""

    section: str
    key: str  # TOML key path, e.g. "mqtt.host"
    env: str  # e.g. "AEMON_MQTT__HOST"
    type: str
    default: str
    allowed: str
    description: str


@dataclass(frozen=True)
class Section:
    name: str
    table: str  # as the TOML file names it: "mqtt", "machines.<name>"
    description: str
    settings: tuple[Setting, ...]


SIMPLE_TYPES: dict[Any, str] = {type(None): "none", SecretStr: "secret str", Path: "path"}


def _type_name(annotation: Any) -> str:
    """A field's annotation as a reader would write it: `str | none`, `list of str`, `0 | 1`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        name = " | ".join(repr(a).replace("'", '"') for a in args)
    elif origin in (typing.Union, types.UnionType):
        name = " | ".join(_type_name(a) for a in args)
    elif origin is tuple:
        name = f"list of {_type_name(args[0])}"
    elif origin is dict:
        name = f"table of {_type_name(args[1])}"
    else:
        name = SIMPLE_TYPES.get(annotation) or str(getattr(annotation, "__name__", annotation))
    return name


def _toml(value: Any) -> str:
    """A default as it would be written in the TOML file."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return f'"{value}"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _allowed(field: FieldInfo) -> str:
    """The field's bounds, e.g. `>= 1, <= 65535`."""
    parts = []
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            parts.append(f">= {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            parts.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            parts.append(f"<= {item.le}")
        elif isinstance(item, annotated_types.Lt):
            parts.append(f"< {item.lt}")
    return ", ".join(parts)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    return _toml(field.get_default(call_default_factory=True))


def _model(annotation: Any) -> type[BaseModel] | None:
    """The settings model of an annotation `Model` or `Model | None`, else None."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _section_model(field: FieldInfo) -> tuple[type[BaseModel], str] | None:
    """The model of a section field and how the file holds it: "" (one table), `.<name>`
    (a table of them, keyed by name: machines) or `[]` (an array of tables: maintenance)."""
    annotation = field.annotation
    if typing.get_origin(annotation) is dict:
        model = _model(typing.get_args(annotation)[1])
        return (model, f".{MACHINE_KEY}") if model else None
    if typing.get_origin(annotation) is tuple:
        model = _model(typing.get_args(annotation)[0])
        return (model, "[]") if model else None
    model = _model(annotation)
    return (model, "") if model else None


def _rows(model: type[BaseModel], key: str, env: str | None, section: str) -> list[Setting]:
    """A model's fields as rows, a field that is a table of its own followed by its fields.
    `env`: the variable's stem, None inside an array (set only as JSON, whole)."""
    delimiter = str(Settings.model_config.get("env_nested_delimiter", "__"))
    rows = []
    for name, field in model.model_fields.items():
        field_env = None if env is None else env + delimiter + name.upper()
        rows.append(
            Setting(
                section=section,
                key=f"{key}.{name}",
                env=field_env or "",
                type=_type_name(field.annotation),
                default=_default(field),
                allowed=_allowed(field),
                description=field.description or "",
            )
        )
        nested = _model(field.annotation)
        if nested is not None:
            rows += _rows(nested, f"{key}.{name}", field_env, section)
    return rows


def settings_sections() -> list[Section]:
    """Every section of `Settings` with its fields, in declaration order. A section's
    description is its model's docstring (or the field's own description)."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    delimiter = str(Settings.model_config.get("env_nested_delimiter", "__"))
    sections = []
    for name, section_field in Settings.model_fields.items():
        found = _section_model(section_field)
        if found is None:
            raise TypeError(f"Settings.{name} is not a section: the generator needs updating")
        model, kind = found
        table = name + kind
        env: str | None = prefix + name.upper()
        if kind == f".{MACHINE_KEY}":
            env = f"{env}{delimiter}{MACHINE_KEY.upper()}"
        elif kind == "[]":
            env = None
        rows = _rows(model, table, env, name)
        description = section_field.description or model.__doc__ or ""
        if kind == "[]":
            whole = f"{prefix}{name.upper()}"
            description += (
                f" Given as `[[{name}]]` tables; from the environment, as JSON in `{whole}`."
            )
        sections.append(Section(name, table, " ".join(description.split()), tuple(rows)))
    return sections


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def configuration_page() -> str:
    lines = [
        GENERATED_NOTE.format(source="service/core/config.py"),
        "",
        "# Configuration reference",
        "",
        "Every setting of the daemon, generated from the settings models in "
        "`service/core/config.py` when this manual is built. How a configuration is given "
        "(the TOML file, environment variables, declared machines) is on the "
        "[Configuration](../configuration.md) page.",
        "",
        "- **setting**: the TOML key, `section.field` (`[section]` is the file's table), and "
        "its type.",
        "- **default**: the value when neither the file nor the environment sets it.",
        "- **environment**: the variable that overrides the file. Lists and tables are "
        "given as JSON: `AEMON_MQTT__TOPICS='[\"plant/{machine}\"]'`.",
        "- **allowed**: the range the value is checked against at start; a value outside "
        "it, or an unknown key, stops the daemon with exit status 2.",
        "",
    ]
    for section in settings_sections():
        lines += [f"## `[{section.table}]`", "", section.description, ""]
        lines += [
            "| setting | default | description |",
            "|---|---|---|",
        ]
        for s in section.settings:
            default = _code(s.default) if s.default not in ("required", "unset") else s.default
            facts = [f"environment `{s.env}`"] if s.env else []
            facts += [f"allowed {s.allowed}"] if s.allowed else []
            lines.append(
                f"| `{s.key}`<br>{_cell(s.type)} | {default} "
                f"| {_cell(s.description)}<br>{_cell('; '.join(facts))} |".replace("<br> |", " |")
            )
        lines.append("")
    return "\n".join(lines)


# -- metrics ------------------------------------------------------------------------------------

EXPOSED_SUFFIX = {"counter": "_total", "info": "_info"}
SAMPLE_SUFFIXES = {"histogram": " (`_bucket`, `_sum`, `_count`)"}
# Labels whose values the code enumerates.
LABEL_VALUES: dict[str, tuple[str, Callable[[], list[str]]]] = {
    "reason": (
        "`aemon_readings_rejected_total`: why a reading was refused "
        "(`service.core.types.RejectReason`)",
        lambda: _values(RejectReason),
    ),
    "state": (
        "`aemon_machine_state`: where a machine is in its life (`service.core.types.MachineState`)",
        lambda: _values(MachineState),
    ),
    "outcome": (
        "`aemon_finetune_runs_total`: how a fit or fine-tune ended "
        "(`service.core.metrics.FINETUNE_OUTCOMES`)",
        lambda: list(FINETUNE_OUTCOMES),
    ),
}


def _values(enum: type[Enum]) -> list[str]:
    return [str(member.value) for member in enum]


@dataclass(frozen=True)
class MetricDoc:
    name: str  # as exposed: with `_total` on counters, `_info` on infos
    type: str
    labels: tuple[str, ...]
    help: str


def _wrappers(metrics: Metrics) -> Iterator[MetricWrapperBase]:
    for value in vars(metrics).values():
        inner = getattr(value, "metric", value)  # a ByMachine wraps its metric
        if isinstance(inner, MetricWrapperBase):
            yield inner


def metric_docs() -> list[MetricDoc]:
    """Every metric registered by `Metrics`, in registration order."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    labelnames = {w._name: tuple(w._labelnames) for w in _wrappers(metrics)}
    docs = []
    for family in registry.collect():
        sample_labels = [
            label
            for sample in family.samples
            for label in sample.labels
            if label not in ("le", "quantile")
        ]
        labels = labelnames.get(family.name) or tuple(dict.fromkeys(sample_labels))
        name = family.name + EXPOSED_SUFFIX.get(family.type, "")
        docs.append(MetricDoc(name, family.type, labels, family.documentation))
    return docs


def metrics_page() -> str:
    lines = [
        GENERATED_NOTE.format(source="service/core/metrics.py"),
        "",
        "# Metrics reference",
        "",
        "Every metric the daemon exports on `/metrics`, generated from the registry that "
        "`service/core/metrics.py` fills (`Metrics(CollectorRegistry())`) when this manual is "
        "built. The HTTP endpoints, and how to read only a few samples, are on the "
        "[MQTT and HTTP contracts](../contracts.md#metrics) page.",
        "",
        "Counters have no `_created` samples (the daemon turns them off: for a plant they were "
        "a third of the page). Every counter of a machine is created at 0 when the machine "
        "appears, each `outcome` of `aemon_finetune_runs_total` too, so that `rate()` and "
        "`increase()` see its first event.",
        "",
        "| metric | type | labels | help |",
        "|---|---|---|---|",
    ]
    for m in metric_docs():
        labels = ", ".join(f"`{label}`" for label in m.labels)
        lines.append(
            f"| `{m.name}`{SAMPLE_SUFFIXES.get(m.type, '')} | {m.type} | {labels} "
            f"| {_cell(m.help)} |"
        )
    lines += ["", "## Label values", ""]
    for label, (where, values) in LABEL_VALUES.items():
        listed = ", ".join(f"`{v}`" for v in values())
        lines.append(f"- `{label}` of {where}: {listed}.")
    lines += [
        "- `machine`: the machine's name, from its topic; empty on "
        "`aemon_readings_rejected_total` when the reading's machine is not known.",
        "- `thread` of `aemon_thread_failures_total`: the worker that died "
        "(`pipeline`, `finetuner`, `http`, `mqtt`: paho's network thread).",
        "",
    ]
    return "\n".join(lines)


# -- the hook ----------------------------------------------------------------------------------

GENERATED: dict[str, Callable[[], str]] = {
    "reference/configuration.md": configuration_page,
    "reference/metrics.md": metrics_page,
}


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for path, render in GENERATED.items():
        files.append(File.generated(config, path, content=render()))
    return files

"""What `aemon run` needs beyond valid settings, checked before it starts: a known model
family and parameters, readable secret and TLS files, a writable state directory, topic
templates that subscribe to what they match, declared machines that make sense.

`aemon check-config` and `aemon run` both call `preflight`, so a problem that would stop
the daemon later (or make it fail at its first fit) is named at start, placed like a config
error (`a.toml:12: model.kind: ...`), and the daemon exits with status 2.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from service.core.config import Settings
from service.core.config_errors import Origins, dotted, nearest, unknown_variables
from service.core.toml_lines import Loc
from service.faults import FAULT_ENV
from service.scoring.models import REGISTRY, family_names
from service.stream.ingest import TopicTemplate

# Environment variables aemon reads that are no setting.
OTHER_VARIABLES = ("AEMON_CONFIG", FAULT_ENV)
_FIELDS = ("{machine}", "{sensor}")


@dataclass
class Preflight:
    """Problems stop the daemon; warnings are printed and it starts."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def preflight(settings: Settings, file: Path | None, *, starting: bool = True) -> Preflight:
    """Every check; `file` is the config file the settings were read from, if any.

    `starting` is `aemon run`'s: the user that runs the checks is the daemon's. Otherwise
    (`aemon check-config`, often run by an administrator ahead of the service manager that
    creates the state directory for the daemon's user, as systemd's StateDirectory= does) a
    state directory that does not exist yet and that this user could not create is a
    warning, not a problem."""
    origins = Origins(Settings, file)
    result = Preflight()
    found = [*_model(settings), *_files(settings), *_topics(settings), *_machines(settings)]
    later: list[tuple[Loc, str]] = []
    for loc, problem, certain in _state(settings):
        (found if certain or starting else later).append((loc, problem))
    for loc, problem in sorted(found, key=lambda item: origins.order(item[0])):
        result.problems.append(f"{origins.where(loc)}{dotted(loc)}: {problem}")
    for loc, warning in [*later, *_unused_tls(settings)]:
        result.warnings.append(f"{origins.where(loc)}{dotted(loc)}: {warning}")
    result.warnings.extend(unknown_variables(Settings, OTHER_VARIABLES))
    return result


def _model(settings: Settings) -> Iterator[tuple[Loc, str]]:
    kind = settings.model.kind
    if kind not in REGISTRY:
        guess = nearest(kind, family_names())
        hint = f"; did you mean {guess}?" if guess else ""
        known = ", ".join(family_names())
        yield ("model", "kind"), f'unknown model kind "{kind}" (known: {known}){hint}'
        return
    config_cls = REGISTRY[kind][0]
    names = [f.name for f in dataclasses.fields(config_cls)][2:]  # after window, n_sensors
    for param in settings.model.params:
        if param not in names:
            guess = nearest(param, names)
            hint = f"; did you mean {guess}?" if guess else f" (known: {', '.join(names)})"
            yield ("model", "params", param), f"model {kind} has no parameter {param}{hint}"


def _files(settings: Settings) -> Iterator[tuple[Loc, str]]:
    mqtt = settings.mqtt
    files: list[tuple[Loc, Path | None]] = [
        (("mqtt", "password_file"), mqtt.password_file),
        (("http", "command_token_file"), settings.http.command_token_file),
    ]
    if mqtt.tls:
        for name in ("ca_file", "cert_file", "key_file"):
            files.append((("mqtt", name), getattr(mqtt, name)))
    for loc, path in files:
        if path is None:
            continue
        try:
            content = path.read_bytes()
        except OSError as exc:
            yield loc, f"cannot read {path}: {exc.strerror or exc}"
            continue
        if loc[-1] == "command_token_file" and not content.strip():
            yield loc, f"{path} is empty: it must hold the token that commands send"


def _unused_tls(settings: Settings) -> Iterator[tuple[Loc, str]]:
    if settings.mqtt.tls:
        return
    for name in ("ca_file", "cert_file", "key_file"):
        if getattr(settings.mqtt, name) is not None:
            yield ("mqtt", name), "set but not used: mqtt.tls is false"


def _state(settings: Settings) -> Iterator[tuple[Loc, str, bool]]:
    """The state directory, and its models/ folder if there is one, writable; or the nearest
    existing parent writable, to create it (the last flag False: another user may)."""
    state = settings.state.dir.absolute()
    loc: Loc = ("state", "dir")
    existing = state
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        yield loc, f"cannot create {state}: {existing} is not a directory", True
        return
    if existing != state:
        if not os.access(existing, os.W_OK | os.X_OK):
            yield loc, f"cannot create {state}: {existing} is not writable by this user", False
        return
    for folder in (state, state / "models"):
        if folder.exists() and not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
            yield loc, f"{folder} is not a writable directory", True


def _topics(settings: Settings) -> Iterator[tuple[Loc, str]]:
    for index, template in enumerate(settings.mqtt.topics):
        loc: Loc = ("mqtt", "topics", index)
        problem = topic_problem(template)
        if problem is not None:
            yield loc, f'"{template}": {problem}'


def topic_problem(template: str) -> str | None:
    """Why `template` cannot be subscribed to and matched, or None."""
    return next(_topic_problems(template), None)


def _topic_problems(template: str) -> Iterator[str]:
    if not template:
        yield "empty"
    if re.search(r"[+#]", template):
        yield "has an MQTT wildcard (+ or #): {machine} and {sensor} are the wildcards"
    for name in re.findall(r"\{[^}]*\}", template):
        if name not in _FIELDS:
            yield f"unknown field {name}: the fields are {{machine}} and {{sensor}}"
    for name in _FIELDS:
        if template.count(name) > 1:
            yield f"{name} more than once"
    for level in template.split("/"):
        if any(name in level for name in _FIELDS) and level not in _FIELDS:
            yield f'"{level}": a field must be a whole topic level'
    try:
        TopicTemplate.compile(template)
    except ValueError as exc:
        yield str(exc).replace(f"topic template {template!r} ", "")


def _machines(settings: Settings) -> Iterator[tuple[Loc, str]]:
    for name, machine in settings.machines.items():
        twice = sorted({s for s in machine.sensors if machine.sensors.count(s) > 1})
        if twice:
            yield ("machines", name, "sensors"), f"listed twice: {', '.join(twice)}"
        rule = machine.running
        if rule is not None and rule.sensor not in machine.sensors:
            known = ", ".join(dict.fromkeys(machine.sensors))
            yield (
                ("machines", name, "running", "sensor"),
                f'"{rule.sensor}" is not one of the machine\'s sensors ({known})',
            )

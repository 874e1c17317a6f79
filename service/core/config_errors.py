"""Configuration errors that say what to fix, one line each.

`a.toml:3: mqtt.port: expected an integer from 1 to 65535, given "abc"`: the file and the
line of the key (`service.core.toml_lines` finds it in the text), the key path, what was
expected (from the field's type and bounds) and what was given; the nearest known key for a
misspelt one; the environment variable instead of the file when the value came from one
(`AEMON_MQTT__PORT (environment)`). `service.core.config.load_settings` turns
pydantic's errors into these lines; `service.preflight` places its own problems with
`Origins.where`.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource

from service.core.toml_lines import BARE_KEY, Loc, TomlLines

_GIVEN_MAX = 60
_JSON = (tuple, list, dict)  # types pydantic-settings reads from a variable as JSON


# -- where a value came from: the file or the environment ----------------------------------
class Origins:
    """Where each setting's value came from: a line of `file`, or an environment variable."""

    def __init__(self, settings_cls: type[BaseSettings], file: Path | None) -> None:
        config = settings_cls.model_config
        self.prefix = str(config.get("env_prefix") or "").upper()
        self.delimiter = str(config.get("env_nested_delimiter") or "__")
        self.file = file
        self.toml = TomlLines(_read(file)) if file is not None else TomlLines("")
        self.environ = {k.upper(): k for k in os.environ if k.upper().startswith(self.prefix)}
        try:
            self.from_env: dict[str, Any] = EnvSettingsSource(settings_cls)()
        except ValueError:  # a variable that is not valid JSON: reported on its own
            self.from_env = {}

    def env_name(self, path: Iterable[str | int]) -> str:
        """`("mqtt", "port")` -> `AEMON_MQTT__PORT`."""
        return self.prefix + self.delimiter.join(str(p).upper() for p in path)

    def variable(self, loc: Loc) -> str | None:
        """The environment variable that gave the value at `loc`, if one did."""
        if not _holds(self.from_env, loc):
            return None
        for cut in range(len(loc), 0, -1):
            name = self.env_name(loc[:cut])
            if name in self.environ:
                return self.environ[name]
        below = sorted(v for k, v in self.environ.items() if k.startswith(self.env_name(loc)))
        return ", ".join(below) if below else f"{self.env_name(loc)}{self.delimiter}*"

    def where(self, loc: Loc) -> str:
        """`a.toml:3: `, `AEMON_MQTT__PORT (environment): `, `a.toml: ` or nothing."""
        variable = self.variable(loc)
        if variable is not None:
            return f"{variable} (environment): "
        if self.file is None:
            return ""
        line = self.toml.line(loc)
        return f"{self.file}:{line}: " if line is not None else f"{self.file}: "

    def order(self, loc: Loc) -> tuple[int, int]:
        """Errors of the file by line first, then the environment's."""
        if self.variable(loc) is not None:
            return (2, 0)
        line = self.toml.line(loc)
        return (0, line) if line is not None else (1, 0)


def _read(file: Path) -> str:
    try:
        return file.read_text()
    except (OSError, UnicodeDecodeError):
        return ""


def _holds(tree: Any, loc: Loc) -> bool:
    for part in loc:
        listed = isinstance(tree, list) and isinstance(part, int) and 0 <= part < len(tree)
        if not (listed or (isinstance(tree, Mapping) and part in tree)):
            return False
        tree = tree[part]
    return True


# -- what a key is: its field, its type ----------------------------------------------------
@dataclass(frozen=True)
class Target:
    """What `loc` names in the settings: the key path without pydantic's union tags, the
    expected type, the field (for bounds and description), and the model holding it."""

    path: Loc
    annotation: Any
    field: FieldInfo | None
    parent: type[BaseModel] | None


def target(model: type[BaseModel], loc: Loc) -> Target:
    path: list[str | int] = []
    annotation: Any = model
    field: FieldInfo | None = None
    parent: type[BaseModel] | None = None
    for part in loc:
        kind = _optional(annotation)
        if annotation is None:  # below an unknown key: taken as it is
            path.append(part)
        elif _is_model(kind) and isinstance(part, str):
            parent, field = kind, kind.model_fields.get(part)
            annotation = field.annotation if field is not None else None
            path.append(part)
        elif get_origin(kind) is dict and isinstance(part, str):
            annotation, field = get_args(kind)[1], None
            path.append(part)
        elif get_origin(kind) in (tuple, list) and isinstance(part, int):
            annotation, field = get_args(kind)[0], None
            path.append(part)
        # else: a union member's tag (`int`, `float`) that pydantic adds: not a key
    return Target(tuple(path), annotation, field, parent)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _optional(annotation: Any) -> Any:
    """`X | None` -> `X`."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


_NAMES: dict[Any, tuple[str, str]] = {
    bool: ("true or false", "booleans"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
    SecretStr: ("a string", "strings"),
    Path: ("a path (a string)", "paths"),
}


def expected(annotation: Any, field: FieldInfo | None = None) -> str:
    """`an integer from 1 to 65535`, `"open" or "allowlist"`, `a list of strings`."""
    kind = _optional(annotation)
    origin = get_origin(kind)
    if kind in _NAMES:
        text = _NAMES[kind][0]
    elif origin is Literal:
        values = [shown(v) for v in get_args(kind)]
        text = values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]
    elif _is_model(kind) or origin is dict:
        text = "a table"
    elif origin in (tuple, list):
        item = _optional(get_args(kind)[0])
        plural = _NAMES[item][1] if item in _NAMES else "tables" if _is_model(item) else "values"
        text = f"a list of {plural}"
    elif origin in (Union, types.UnionType):
        members = {expected(a) for a in get_args(kind) if a is not type(None)}
        text = "a number" if members == {"an integer", "a number"} else " or ".join(sorted(members))
    else:
        text = "a value of another type"
    return text + _bounds(field)


def _bounds(field: FieldInfo | None) -> str:
    if field is None:
        return ""
    found: dict[str, Any] = {}
    for item in field.metadata:
        for name in ("ge", "gt", "le", "lt", "pattern"):
            if getattr(item, name, None) is not None:
                found[name] = getattr(item, name)
    if "ge" in found and "le" in found:
        text = f" from {found['ge']} to {found['le']}"
    else:
        signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
        text = " and".join(f" {signs[k]} {v}" for k, v in found.items() if k in signs)
    if "pattern" in found:
        text += f" matching {found['pattern']}"
    return text


def shown(value: Any) -> str:
    """A value as TOML would write it, cut short: `"abc"`, `true`, `[1, 2]`."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{k} = {shown(v)}" for k, v in value.items()) + "}"
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(shown(v) for v in value) + "]"
    else:
        text = str(value)
    return text if len(text) <= _GIVEN_MAX else text[: _GIVEN_MAX - 3] + "..."


def dotted(path: Loc) -> str:
    """`("machines", "pump-1", "period")` -> `machines.pump-1.period`; indices as `[0]`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            key = part if BARE_KEY.fullmatch(part) else json.dumps(part)
            text += f".{key}" if text else key
    return text


def nearest(word: str, choices: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


# -- pydantic's errors, described ----------------------------------------------------------
def describe(
    exc: ValidationError, settings_cls: type[BaseSettings], file: Path | None
) -> list[str]:
    """One line per error of `exc`, those of the file by line, then the environment's."""
    origins = Origins(settings_cls, file)
    found: dict[str, tuple[int, int]] = {}
    for error in exc.errors():
        aim = target(settings_cls, tuple(error["loc"]))
        place = aim.path[:-1] if error["type"] == "missing" else aim.path  # where it should be
        line = origins.where(place) + _problem(error, aim, origins)
        found.setdefault(line, origins.order(place))  # union members give the same line
    return sorted(found, key=lambda line: found[line])


def _problem(error: Mapping[str, Any], aim: Target, origins: Origins) -> str:
    key, kind = dotted(aim.path), str(error["type"])
    env = origins.variable(aim.path) is not None
    if kind == "extra_forbidden" and aim.parent is not None:
        name = str(aim.path[-1])
        guess = nearest(name, aim.parent.model_fields)
        what = "setting" if env else "section" if len(aim.path) == 1 else "key"
        if guess is None:
            return f"{key}: unknown {what} (known: {', '.join(aim.parent.model_fields)})"
        shown_guess = origins.env_name((*aim.path[:-1], guess)) if env else guess
        return f"{key}: unknown {what}; did you mean {shown_guess}?"
    if kind == "missing":
        about = f" ({aim.field.description})" if aim.field and aim.field.description else ""
        return f"{key}: required, not given: expected {expected(aim.annotation, aim.field)}{about}"
    if kind in ("value_error", "assertion_error"):
        message = re.sub(r"^(Value|Assertion) error, ", "", str(error["msg"]))
        return f"{key}: {message}" if key else message
    given = error.get("input")
    if aim.annotation is None:
        return f"{key}: {str(error['msg']).lower()}, given {shown(given)}"
    line = f"{key}: expected {expected(aim.annotation, aim.field)}, given {shown(given)}"
    choices = get_args(_optional(aim.annotation)) if kind == "literal_error" else ()
    guess = nearest(given, [str(c) for c in choices]) if isinstance(given, str) else None
    if guess is not None:
        line += f"; did you mean {shown(guess)}?"
    if kind == "string_pattern_mismatch" and aim.field and aim.field.description:
        line += f" ({aim.field.description})"
    return line


def describe_env_json(settings_cls: type[BaseSettings], exc: Exception) -> list[str]:
    """pydantic-settings refuses a list or table variable that is not valid JSON, naming
    the section only: this names the variable."""
    origins = Origins(settings_cls, None)
    lines = []
    for upper, name in sorted(origins.environ.items()):
        rest = upper[len(origins.prefix) :].lower().split(origins.delimiter)
        aim = target(settings_cls, tuple(rest))
        kind = _optional(aim.annotation)
        if len(aim.path) < len(rest) or not (_is_model(kind) or get_origin(kind) in _JSON):
            continue
        try:
            json.loads(os.environ[name])
        except ValueError as bad:
            lines.append(
                f"{name} (environment): {dotted(aim.path)}: expected {expected(aim.annotation)}"
                f" as JSON, given {shown(os.environ[name])} ({bad.args[0]})"
            )
    return lines or [f"environment: {exc}"]


def unknown_variables(settings_cls: type[BaseSettings], others: Iterable[str]) -> Iterator[str]:
    """`AEMON_*` variables that are no setting (pydantic-settings ignores them silently)
    and not among `others` (variables read elsewhere, such as `AEMON_CONFIG`)."""
    origins = Origins(settings_cls, None)
    known = set(_variables(origins, settings_cls, ()))
    free = [v for v in known if v.endswith("*")]  # tables of any name: machines
    skip = {o.upper() for o in others}
    for upper, name in sorted(origins.environ.items()):
        if upper in known | skip or any(upper.startswith(f[:-1]) for f in free):
            continue
        guess = nearest(upper, [k for k in known if not k.endswith("*")])
        hint = f"; did you mean {guess}?" if guess else ""
        yield f"{name} (environment): not a setting, ignored{hint}"


def _variables(origins: Origins, model: type[BaseModel], path: Loc) -> Iterator[str]:
    for name, field in model.model_fields.items():
        here = (*path, name)
        yield origins.env_name(here)
        kind = _optional(field.annotation)
        if _is_model(kind):
            yield from _variables(origins, kind, here)
        elif get_origin(kind) is dict:
            yield origins.env_name(here) + origins.delimiter + "*"

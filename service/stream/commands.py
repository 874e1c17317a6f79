"""Operator commands: what an operator may ask of a machine, checked the same way whether
it came over MQTT (`aemon/command/<machine>`), HTTP (`POST /api/machines/<machine>/commands`)
or the CLI (`aemon machine`, through HTTP), and the outcome each door reports.

>>> c = parse(b'{"command": "maintenance", "for": "2h", "by": "ana", "reason": "bearing swap"}')
>>> c.command, c.by, c.for_
('maintenance', 'ana', 7200.0)
>>> try:
...     parse(b'{"command": "reboot"}')
... except CommandError as exc:
...     print(str(exc)[:40], "...", str(exc)[-15:])
command: must be one of ack, false_alarm ... (got 'reboot')
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.core.types import COMMANDS, CommandName
from service.stream.publish import rfc3339

# A command's JSON is small; anything larger is not one.
MAX_COMMAND_BYTES = 4096
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")


class CommandError(ValueError):
    """The command cannot be carried out; the message says why (for the operator)."""


class Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    command: CommandName
    by: str = Field("unknown", min_length=1, max_length=200)
    reason: str = Field("", max_length=1000)
    alert_id: str | None = Field(None, max_length=100)
    windows: int | None = Field(None, ge=10, le=100_000)
    until: float | None = Field(None, gt=0)  # Unix seconds
    for_: float | None = Field(None, alias="for", gt=0, le=366 * 86400)  # seconds

    @field_validator("for_", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return duration(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _maintenance_has_an_end(self) -> Command:
        if self.command == "maintenance" and (self.until is None) == (self.for_ is None):
            raise ValueError("maintenance needs `until` (Unix seconds) or `for` (e.g. 2h)")
        return self

    def maintenance_end(self, now: float) -> float:
        end = self.until if self.until is not None else now + (self.for_ or 0.0)
        if end <= now:
            raise CommandError("maintenance would end in the past")
        return end


@dataclass(frozen=True)
class Outcome:
    command: str
    ok: bool
    error: str | None
    at: float  # wall-clock
    unknown_machine: bool = False  # refused because no such machine: HTTP's 404

    def document(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "ok": self.ok,
            "error": self.error,
            "at": rfc3339(self.at),
        }


def parse(payload: bytes) -> Command:
    """A command from its JSON; `CommandError` says what is wrong with it."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"a command is at most {MAX_COMMAND_BYTES} bytes")
    try:
        return Command.model_validate(orjson.loads(payload))
    except orjson.JSONDecodeError as exc:
        raise CommandError(f"not JSON: {exc}") from None
    except ValidationError as exc:
        raise CommandError(_explain(exc)) from None


def refused(command: str, error: str) -> Outcome:
    return Outcome(command, False, error, time.time())


def duration(text: str) -> float:
    """Seconds of `90`, `90s`, `45m`, `2h`, `1h30m`.

    >>> duration("1h30m"), duration("90")
    (5400.0, 90.0)
    """
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 90m, 2h, 1h30m, 3600)")
    h, m, s = (float(g) if g else 0.0 for g in match.groups())
    return h * 3600 + m * 60 + s


def _explain(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "command"
        if error["type"] == "literal_error":
            parts.append(f"{where}: must be one of {', '.join(COMMANDS)} (got {error['input']!r})")
        elif error["type"] == "extra_forbidden":
            parts.append(f"{where}: not a field of a command")
        else:
            parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)

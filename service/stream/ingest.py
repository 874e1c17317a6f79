"""Topic + payload -> `Reading`s, or counted `Rejection`s with a reason.

Runs on paho's network thread, so it only parses: no I/O, no locks held for long.

>>> ing = Ingestor(("plant/{machine}/{sensor}", "plant/{machine}"), max_payload_bytes=1024)
>>> ing.parse("plant/pump-7/pressure", b'{"ts": 100.5, "value": 3.2}', received_at=101.0).readings
[Reading(machine='pump-7', sensor='pressure', ts=100.5, value=3.2)]
>>> ing.parse("plant/pump-7/pressure", b"3.2", received_at=101.0).readings[0].ts
101.0
>>> r = ing.parse("plant/pump-7", b'{"ts": 100, "values": {"a": 1, "b": "x"}}', received_at=101.0)
>>> [(x.sensor, x.value) for x in r.readings], [x.reason.value for x in r.rejections]
([('a', 1.0)], ['schema'])
>>> ing.parse("other/topic/a/b", b"1", received_at=0.0).rejections[0].reason.value
'unknown_topic'

A per-machine record valid throughout (float values, known sensors) stays one `Row`:

>>> r = ing.parse("plant/pump-7", b'{"ts": 100, "values": {"a": 1.5, "b": 2.0}}', 101.0)
>>> r.readings, r.rows, r.count
([], [Row(ts=100.0, values={'a': 1.5, 'b': 2.0})], 2)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.core.metrics import REJECTED
from service.core.types import Reading, Rejection, RejectReason, Row

_TEMPLATE_FIELD = re.compile(r"\{(machine|sensor)\}")
# Topics whose match is remembered (1,000 machines x 32 sensors fit; a flood of made-up
# topics cannot grow it further).
MAX_CACHED_TOPICS = 65_536


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    ts: float | datetime | None = Field(default=None, union_mode="left_to_right")


class SensorRecord(_Record):
    """`{"ts": 1732345678.25, "value": 3.21}` on a per-sensor topic."""

    value: Any


class MachineRecord(_Record):
    """`{"ts": ..., "values": {"pressure": 3.21, ...}}` on a per-machine topic."""

    values: dict[str, Any]


@dataclass(frozen=True)
class TopicTemplate:
    """A topic template such as `plant/{machine}/{sensor}` and what it matches."""

    template: str
    pattern: re.Pattern[str]
    per_sensor: bool

    @classmethod
    def compile(cls, template: str) -> TopicTemplate:
        fields = _TEMPLATE_FIELD.findall(template)
        if "machine" not in fields:
            raise ValueError(f"topic template {template!r} has no {{machine}}")
        regex = "".join(
            f"(?P<{part[1:-1]}>[^/+#]+)" if _TEMPLATE_FIELD.fullmatch(part) else re.escape(part)
            for part in re.split(r"(\{machine\}|\{sensor\})", template)
        )
        return cls(template, re.compile(regex + r"\Z"), "sensor" in fields)

    @property
    def subscription(self) -> str:
        """The MQTT filter of this template: each field becomes a `+` wildcard."""
        return _TEMPLATE_FIELD.sub("+", self.template)


@dataclass
class IngestResult:
    """A message's readings (all of the topic's `machine`) and rejections. Its records
    that were valid throughout are `rows`, which come before all its `readings`: the
    windower takes them in that order, which is the message's."""

    readings: list[Reading] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    machine: str = ""
    rows: list[Row] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Values accepted by ingest: the readings and every value of every row."""
        return len(self.readings) + sum(len(row.values) for row in self.rows)

    def all_readings(self) -> list[Reading]:
        """Rows and readings as the per-value path makes them, in message order."""
        expanded = [r for row in self.rows for r in row.readings(self.machine)]
        return expanded + self.readings

    def reject(self, reason: RejectReason, detail: str, machine: str = "") -> IngestResult:
        self.rejections.append(Rejection(reason, detail, machine))
        return self


class Ingestor:
    """Parses messages on the configured topic templates.

    `declared` maps machines declared in the config to their sensors: a reading of another
    sensor of such a machine is `unknown_sensor`. Discovered machines are checked later,
    once their sensor set is fixed. Undeclared machines are taken when `allow_undeclared`,
    and then, if `allow` is given (discovery's allowlist), only names matching a pattern.
    """

    def __init__(
        self,
        templates: tuple[str, ...],
        max_payload_bytes: int,
        future_tolerance: float = 300.0,
        declared: Mapping[str, tuple[str, ...]] | None = None,
        allow_undeclared: bool = True,
        allow: tuple[str, ...] | None = None,
    ) -> None:
        self.templates = [TopicTemplate.compile(t) for t in templates]
        self.max_payload_bytes = max_payload_bytes
        self.future_tolerance = future_tolerance
        self.declared = {m: frozenset(s) for m, s in (declared or {}).items()}
        self.allow_undeclared = allow_undeclared
        self.allow = allow
        self._allowed: dict[str, bool] = {}
        self._matched: dict[str, tuple[TopicTemplate, str, str | None]] = {}

    @property
    def subscriptions(self) -> list[str]:
        return sorted({t.subscription for t in self.templates})

    def parse(self, topic: str, payload: bytes, received_at: float) -> IngestResult:
        result = IngestResult()
        if len(payload) > self.max_payload_bytes:
            return result.reject(RejectReason.TOO_LARGE, f"{len(payload)} bytes")
        match = self._match(topic)
        if match is None:
            return result.reject(RejectReason.UNKNOWN_TOPIC, topic)
        template, machine, sensor = match
        result.machine = machine
        if machine not in self.declared and not self._undeclared_taken(machine):
            return result.reject(RejectReason.UNKNOWN_TOPIC, f"undeclared machine {machine}")
        try:
            document, finite = decode(payload)
        except ValueError as exc:
            return result.reject(RejectReason.MALFORMED, str(exc)[:200], machine)
        records = document if isinstance(document, list) else [document]
        for record in records:
            if template.per_sensor:
                self._sensor_record(result, machine, sensor or "", record, received_at)
            else:
                self._machine_record(result, machine, record, received_at, finite)
        if not records:
            result.reject(RejectReason.SCHEMA, "empty batch", machine)
        return result

    def admits(self, machine: str) -> bool:
        """A declared machine, or an undeclared one that discovery takes."""
        return machine in self.declared or self._undeclared_taken(machine)

    def _undeclared_taken(self, machine: str) -> bool:
        if not self.allow_undeclared:
            return False
        if self.allow is None:
            return True
        taken = self._allowed.get(machine)
        if taken is None:
            if len(self._allowed) >= MAX_CACHED_TOPICS:  # a flood of names must not grow it
                self._allowed.clear()
            taken = self._allowed[machine] = any(fnmatchcase(machine, p) for p in self.allow)
        return taken

    def _match(self, topic: str) -> tuple[TopicTemplate, str, str | None] | None:
        # A plant has a fixed set of topics, one message per reading on per-sensor ones:
        # remembering the matches saves the regexes for almost every message.
        matched = self._matched.get(topic)
        if matched is not None:
            return matched
        for template in self.templates:
            m = template.pattern.match(topic)
            # The label of readings of no accepted machine is no machine's name.
            if m is not None and m["machine"] != REJECTED:
                matched = template, m["machine"], m.groupdict().get("sensor")
                if len(self._matched) < MAX_CACHED_TOPICS:
                    self._matched[topic] = matched
                return matched
        return None

    def _sensor_record(
        self, result: IngestResult, machine: str, sensor: str, record: Any, received_at: float
    ) -> None:
        if type(record) in _NUMBERS:
            self.add(result, machine, sensor, received_at, record, received_at)
            return
        if _plain(record, "value"):
            ts = event_time(record.get("ts"), received_at)
            self.add(result, machine, sensor, ts, record["value"], received_at)
            return
        try:
            parsed = SensorRecord.model_validate(record)
        except ValidationError as exc:
            result.reject(RejectReason.SCHEMA, _first_error(exc), machine)
            return
        ts = event_time(parsed.ts, received_at)
        self.add(result, machine, sensor, ts, parsed.value, received_at)

    def _machine_record(
        self, result: IngestResult, machine: str, record: Any, received_at: float, finite: bool
    ) -> None:
        if _plain(record, "values") and type(record["values"]) is dict:
            ts = record.get("ts")
            values: dict[str, Any] = record["values"]
        else:
            try:
                parsed = MachineRecord.model_validate(record)
            except ValidationError as exc:
                result.reject(RejectReason.SCHEMA, _first_error(exc), machine)
                return
            ts, values = parsed.ts, parsed.values
        self._values(result, machine, event_time(ts, received_at), values, received_at, finite)

    def _values(
        self,
        result: IngestResult,
        machine: str,
        ts: float,
        values: dict[str, Any],
        received_at: float,
        finite: bool = False,
    ) -> None:
        """What `add` decides for each value, with the common case decided inline: a
        batch's readings cost more here than anywhere else in the daemon. A record's time
        is checked once; a record whose values are all finite floats of known sensors is
        kept whole as a `Row` (no per-value object); otherwise a value is taken at once when
        it is a finite float of a known sensor, and anything else goes to `add`, which
        gives the reason. `finite`: the document's floats are all finite (orjson decoded
        it), so a row's need no check."""
        known = self.declared.get(machine)
        if not (math.isfinite(ts) and ts <= received_at + self.future_tolerance):
            for sensor, value in values.items():
                self.add(result, machine, sensor, ts, value, received_at)
            return
        # Rows only before any reading of the message: the windower takes a message's rows
        # first, so a row after a reading would be taken out of the message's order.
        if not result.readings and _valid_row(values, known, finite):
            result.rows.append(_new_row(Row, (ts, values)))
            return
        append = result.readings.append
        for sensor, value in values.items():
            # The comparisons are false for NaN and beyond float32 for infinities.
            if (
                type(value) is float
                and -FLOAT32_MAX <= value <= FLOAT32_MAX
                and (known is None or sensor in known)
            ):
                append(_new_reading(Reading, (machine, sensor, ts, value)))
            else:
                self.add(result, machine, sensor, ts, value, received_at)

    def add(
        self,
        result: IngestResult,
        machine: str,
        sensor: str,
        ts: float,
        value: Any,
        received_at: float,
    ) -> None:
        """One value (of a JSON record, or of another input: Sparkplug): taken, or rejected
        with its reason."""
        reason, detail = self._check(machine, sensor, ts, value, received_at)
        if reason is None:
            result.readings.append(Reading(machine, sensor, ts, float(value)))
        else:
            result.reject(reason, detail, machine)

    def _check(
        self, machine: str, sensor: str, ts: float, value: Any, received_at: float
    ) -> tuple[RejectReason | None, str]:
        if type(value) not in _NUMBERS:
            return RejectReason.SCHEMA, f"{sensor}: value is {type(value).__name__}, not a number"
        if not _finite(value):
            return RejectReason.NON_FINITE, f"{sensor}: {str(value)[:40]} (not finite in float32)"
        if not math.isfinite(ts):
            return RejectReason.NON_FINITE, f"{sensor}: timestamp {ts}"
        if ts > received_at + self.future_tolerance:
            return RejectReason.FUTURE, f"{sensor}: ts {ts} is {ts - received_at:.0f} s ahead"
        known = self.declared.get(machine)
        if known is not None and sensor not in known:
            return RejectReason.UNKNOWN_SENSOR, sensor
        return None, ""


# Windows hold float32: a larger finite value would become an infinity there.
FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max
# `Reading(...)` without its Python-level `__new__`: the same tuple, built in half the time.
_new_reading = _new_row = tuple.__new__
# JSON numbers as orjson and json decode them (a bool is no number here).
_NUMBERS = frozenset({int, float})
# Integer timestamps beyond this go to pydantic, which refuses what overflows a float.
_PLAIN_INT_TS = 2**63


def _plain(record: Any, field: str) -> bool:
    """Whether `record` is what pydantic would pass through unchanged (but for `ts`
    becoming a float): a dict of `field` and at most `ts`, which is absent, null or a
    JSON number. Anything else goes to pydantic, for its checks and its error message.
    Most messages are plain, and pydantic costs more than all the rest of their parsing."""
    if type(record) is not dict or field not in record or len(record) > 2:
        return False
    if len(record) == 2 and "ts" not in record:
        return False
    ts = record.get("ts")
    return (
        ts is None or type(ts) is float or (type(ts) is int and -_PLAIN_INT_TS < ts < _PLAIN_INT_TS)
    )


def _valid_row(values: dict[str, Any], known: frozenset[str] | None, finite: bool) -> bool:
    """Whether `add` would take every value as it is: all floats (not int or bool, which
    it converts), all finite in float32, all of known sensors. C-level calls instead of a
    loop: a sum of floats is finite only if every term is (an overflowing sum of finite
    values only sends the record down the per-value path, which decides each value alone),
    and floats that orjson decoded need not be summed at all (it refuses NaN and
    infinities); with no NaN among them, their extremes bound them all."""
    vals = values.values()
    return (
        len(values) > 0
        and list(map(type, vals)) == [float] * len(values)
        and (finite or math.isfinite(sum(vals)))
        and min(vals) >= -FLOAT32_MAX
        and max(vals) <= FLOAT32_MAX
        and (known is None or known.issuperset(values))
    )


def _finite(value: int | float) -> bool:
    """False for NaN, infinities and numbers beyond float32 (JSON allows 1e999 digits)."""
    try:
        return math.isfinite(value) and abs(value) <= FLOAT32_MAX
    except OverflowError:
        return False


def decode(payload: bytes) -> tuple[Any, bool]:
    """The document, and whether orjson decoded it: then every float in it is finite.
    orjson first (fast); the stdlib only for what orjson refuses, so that `NaN`, `Infinity`
    and overflowing numbers are reported as non_finite rather than malformed."""
    try:
        return orjson.loads(payload), True
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(payload), False
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None


def event_time(ts: float | datetime | None, received_at: float) -> float:
    """Unix seconds of a payload's `ts`; a missing one is the receive time, and an RFC 3339
    time without an offset is taken as UTC."""
    if ts is None:
        return received_at
    if isinstance(ts, datetime):
        return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()
    return float(ts)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"[:200]

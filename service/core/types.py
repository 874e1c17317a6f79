"""The values that flow between stages: ingest -> window -> score -> alert -> publish."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, NamedTuple, TypedDict, get_args

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


class RejectReason(StrEnum):
    """Why a reading was not accepted. The values are the `reason` label of the metrics."""

    MALFORMED = "malformed"
    SCHEMA = "schema"
    NON_FINITE = "non_finite"
    UNKNOWN_TOPIC = "unknown_topic"
    UNKNOWN_SENSOR = "unknown_sensor"
    TOO_LARGE = "too_large"
    LATE = "late"
    FUTURE = "future"
    DUPLICATE = "duplicate"
    OVERLOADED = "overloaded"
    NO_BIRTH = "no_birth"


class MachineState(StrEnum):
    """Where a machine is: its life (discovering, learning, scoring: it only scores once it
    has a model), or, over that, a condition in which it is not scored: in maintenance,
    switched off, or silent for `alert.stale_after` (in that order of precedence)."""

    DISCOVERING = "discovering"
    LEARNING = "learning"
    SCORING = "scoring"
    MAINTENANCE = "maintenance"
    OFF = "off"
    STALE = "stale"


class AlertState(StrEnum):
    NORMAL = "normal"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


class AlertKind(StrEnum):
    """What happened to an alert episode: the `event` field of its payload."""

    RAISED = "raised"
    UPDATED = "updated"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


# What an operator may ask of a machine (service.stream.commands).
CommandName = Literal["ack", "false_alarm", "relearn", "maintenance", "maintenance_end", "forget"]
COMMANDS: tuple[str, ...] = get_args(CommandName)


class Resolution(StrEnum):
    """Why an alert was resolved: the `resolution` field of a resolved alert."""

    CLEAN = "clean"  # `alert.m` clean windows in a row
    FALSE_ALARM = "false_alarm"  # an operator said so
    MAINTENANCE = "maintenance"  # a maintenance window began
    NO_DATA = "no_data"  # the machine went stale
    RELEARN = "relearn"  # the machine learns again
    FORGOTTEN = "forgotten"  # the machine was forgotten
    NEW_NORMAL = "new_normal"  # the state settled and the model re-baselined on it


class TuneReason(StrEnum):
    """Why a fine-tune was requested: due by `finetune.interval`, early by a drift, or a
    firing alert's windows settled into a new normal (`finetune.new_normal_after`)."""

    INTERVAL = "finetune"
    DRIFT = "drift"
    NEW_NORMAL = "new_normal"


class FitOutcome(StrEnum):
    """How a fit or fine-tune ended: the `outcome` label of `aemon_finetune_runs_total`."""

    PROMOTED = "promoted"
    REJECTED_GATE = "rejected_gate"
    TOO_FEW_WINDOWS = "too_few_windows"
    ERROR = "error"
    INITIAL = "initial"


class SensorShareRecord(TypedDict):
    sensor: str
    share: float


class MachineRecord(TypedDict):
    """One machine as `/api/machines` describes it. Times are Unix seconds: `newest_ts`,
    `scored_until` and `alert_started_at` in event time, `last_seen`, `acknowledged_at` and
    `last_fit_at` in wall-clock time."""

    machine: str
    state: str
    maintenance_until: float | None
    acknowledged_by: str | None
    sensors: list[str]
    alert: str
    alert_id: str | None
    alert_started_at: float | None
    alert_peak: float | None
    top_sensors: list[SensorShareRecord]
    acknowledged_at: float | None
    score: float | None
    threshold: float | None
    model_version: int | None
    learning_windows: int
    learning_needed: int
    fitting: bool
    newest_ts: float | None
    scored_until: float | None
    last_seen: float
    last_fit: str | None
    last_fit_at: float | None


class Reading(NamedTuple):
    """One sensor value at one event time (Unix seconds). A named tuple, not a frozen
    dataclass: a batch makes one per value, and a tuple is built in half the time."""

    machine: str
    sensor: str
    ts: float
    value: float


class Row(NamedTuple):
    """One per-machine record that ingest found valid throughout: every value a finite
    float (of a declared sensor, for a declared machine), the time finite and not ahead.
    A batch hands these to the windower whole: a `Reading` per value cost more than
    everything else a batch's value costs (`Ingestor._values`)."""

    ts: float
    values: dict[str, float]

    def readings(self, machine: str) -> list[Reading]:
        """The row as the `Reading`s the per-value path makes of it, in the same order."""
        return [Reading(machine, sensor, self.ts, value) for sensor, value in self.values.items()]


@dataclass(frozen=True, slots=True)
class Rejection:
    """A reading (or a whole message) that was refused, with the reason that is counted."""

    reason: RejectReason
    detail: str
    machine: str = ""
    count: int = 1


# Not frozen: a frozen dataclass's `__init__` sets each field through `object.__setattr__`,
# four times the cost, and a batch makes a `Window` and a `Score` per scored window.
@dataclass(slots=True, eq=False)
class Window:
    """`values[t, s]`: sensor `s` at grid step `t`; the last step is at `end_ts`."""

    machine: str
    end_ts: float
    sensors: tuple[str, ...]
    values: FloatArray


@dataclass(slots=True)
class Score:
    """A window's reconstruction error against its machine's threshold."""

    machine: str
    end_ts: float
    score: float
    threshold: float
    sensor_errors: tuple[float, ...]
    sensors: tuple[str, ...]
    model_version: int

    @property
    def anomalous(self) -> bool:
        return self.score > self.threshold


@dataclass(frozen=True, slots=True)
class SensorShare:
    sensor: str
    share: float


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A raise, update or resolve of one alert episode. Times are event time (Unix seconds)."""

    kind: AlertKind
    alert_id: str
    machine: str
    state: AlertState
    started_at: float
    updated_at: float
    ended_at: float | None
    score: float
    peak_score: float
    threshold: float
    top_sensors: tuple[SensorShare, ...]
    model_version: int
    resolution: Resolution | None = None
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None  # wall-clock

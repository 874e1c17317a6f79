"""What the demo runs: the plant, its fault schedule and the daemon's configuration.

Event time (the readings' own timestamps) runs `speed` times faster than the wall clock.
The daemon judges everything in event time, so at any speed it sees the same plant: about
100 minutes of normal operation to learn from (each machine goes through its set-points,
idle and stop several times, and the ambient temperature wanders), then one fault per
machine, staggered, while the operating points keep changing everywhere.

>>> s = Scenario()
>>> s.learning_s, s.faults[0].start_s, s.duration_s
(6070.0, 7800.0, 10800.0)
>>> round(s.wall_s(150.0))
72
>>> s.anomalous_for(150.0), s.anomalous_for(10.0)
('1s', '12s')
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from service.core.config import LearningSettings, WindowSettings
from simulators.faults import FaultSpec
from simulators.model import FaultKind
from simulators.stack import toml_value

# The daemon's production defaults, to say how the demo differs.
PRODUCTION = {
    "learning windows": LearningSettings.model_fields["windows"].default,
    "window stride": WindowSettings.model_fields["stride"].default,
    "sample period s": WindowSettings.model_fields["period"].default,
}
# The rule's own `for:`: how long a machine alert must fire before Prometheus alerts.
ANOMALOUS_FOR_S = 120.0


def default_faults() -> tuple[FaultSpec, ...]:
    """One fault per machine, of six kinds, staggered. The first four show within a minute
    or two of plant time; heat and wear build up over several minutes."""
    return (
        FaultSpec("pump-1", FaultKind.CAVITATION, 7800, 600),
        FaultSpec("fan-1", FaultKind.IMBALANCE, 7900, 600),
        FaultSpec("compressor-1", FaultKind.VALVE_CLOSURE, 8000, 600),
        FaultSpec("pump-2", FaultKind.SPIKES, 8100, 600),
        # Severity 0.6: the motor runs ~25 °C hot, as a failed cooling fan would make it.
        FaultSpec("fan-2", FaultKind.COOLING_FAILURE, 8700, 900, severity=0.6),
        FaultSpec("compressor-2", FaultKind.BEARING_WEAR, 9000, 1200),
    )


def daemon_config() -> dict[str, dict[str, Any]]:
    """The daemon's TOML sections (the stack adds broker, HTTP port, state dir and logs).

    Samples every 2 s and a window every 5 steps keep the message rate and the training set
    small, so 100 minutes of plant are learnt in seconds. Fine-tuning runs every 30 minutes
    of plant time (production: every hour); its margins are sized for windows 10 s apart."""
    return {
        "window": {"period": 2.0, "length": 30, "stride": 5, "max_stale": 10.0},
        "discovery": {"period": 10.0},
        "learning": {"windows": 600},
        "finetune": {
            "interval": 1800.0,
            "admit_every": 1,
            "min_windows": 30,
            "margin_windows": 20,
        },
    }


@dataclass(frozen=True)
class Scenario:
    machines: int = 6
    seed: int = 0
    period_s: float = 2.0
    faults: tuple[FaultSpec, ...] = field(default_factory=default_faults)
    tail_s: float = 600.0  # after the last fault: its alert resolves, heat goes
    config: dict[str, dict[str, Any]] = field(default_factory=daemon_config)

    @property
    def learning_s(self) -> float:
        """Event seconds until every machine has its learning windows: discovery, one
        window's length, then a window every stride."""
        w = self.config["window"]
        windows = self.config["learning"]["windows"]
        step = w["period"]
        first = self.config["discovery"]["period"] + w["length"] * step
        return float(first + windows * w["stride"] * step)

    @property
    def duration_s(self) -> float:
        return max(f.end_s for f in self.faults) + self.tail_s

    def wall_s(self, speed: float) -> float:
        """Wall seconds the plant publishes at `speed`."""
        return self.duration_s / speed

    def anomalous_for(self, speed: float) -> str:
        """AemonMachineAnomalous' `for:` compressed like event time (at least 1 s): the rule
        waits as long in plant time as it would in production."""
        return f"{max(1, math.ceil(ANOMALOUS_FOR_S / speed))}s"

    def settings_note(self, speed: float) -> str:
        """What differs from production, for the demo's first lines."""
        w, learning = self.config["window"], self.config["learning"]["windows"]
        return (
            f"demo settings: plant time x{speed:g}; samples every {w['period']:g} s; "
            f"learning {learning} windows of {w['length']} steps every {w['stride']} steps "
            f"(~{self.learning_s / 60:.0f} min of plant time; production default: "
            f"{PRODUCTION['learning windows']} windows every step); fine-tune every "
            f"{self.config['finetune']['interval'] / 60:.0f} min of plant time"
        )


def faults_toml(faults: tuple[FaultSpec, ...]) -> str:
    """The schedule as the plant's `--faults` file.

    >>> print(faults_toml(default_faults()[:1]), end="")
    [[fault]]
    machine = "pump-1"
    kind = "cavitation"
    start_s = 7800.0
    duration_s = 600.0
    severity = 1.0
    <BLANKLINE>
    """
    out = []
    for f in faults:
        fields = {
            "machine": f.machine,
            "kind": f.kind.value,
            "start_s": f.start_s,
            "duration_s": f.duration_s,
            "sensor": f.sensor,
            "severity": f.severity,
        }
        out.append("[[fault]]")
        out += [f"{k} = {toml_value(v)}" for k, v in fields.items() if v is not None]
        out.append("")
    return "\n".join(out) + "\n"

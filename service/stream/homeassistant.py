"""Home Assistant's MQTT discovery: every machine a device with three entities.

For each machine, retained discovery messages under `homeassistant.prefix` declare a
`binary_sensor` (anomaly: on while its alert fires, device class `problem`, the alert's
fields as attributes), a `sensor` (its latest score over its threshold) and an enum
`sensor` (its state), grouped as one device and available while aemon's status topic says
`online`. Their state comes from the machine's retained state document on
`<prefix>/machines/<machine>`, published when its state or alert changes and otherwise at
most every `homeassistant.update_interval` seconds. A forgotten machine's messages are
removed (empty retained messages). Only fields of Home Assistant's documented MQTT
discovery schema are used.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from service.core.config import HomeAssistantSettings
from service.core.types import MachineState
from service.stream.machines import MachineRuntime
from service.stream.publish import Publisher, rfc3339

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def object_id(machine: str) -> str:
    """A discovery object id for `machine`: Home Assistant allows `[A-Za-z0-9_-]`; a name
    with other characters gets a hash of itself, so `pump.1` and `pump_1` stay apart.

    >>> object_id("pump-1"), object_id("line 2/pump.1")
    ('pump-1', 'line_2_pump_1_3e0ad5')
    """
    safe = _UNSAFE.sub("_", machine)
    if safe == machine:
        return machine
    return f"{safe}_{hashlib.sha1(machine.encode()).hexdigest()[:6]}"


@dataclass
class _Shown:
    """What a machine's state topic last said, and when (monotonic seconds)."""

    state: str
    alert: str
    at: float


class HomeAssistant:
    def __init__(self, settings: HomeAssistantSettings, publisher: Publisher) -> None:
        self.s = settings
        self.publisher = publisher
        self._shown: dict[str, _Shown] = {}

    def state_topic(self, machine: str) -> str:
        return f"{self.publisher.prefix}/machines/{machine}"

    def config_topics(self, machine: str) -> dict[str, str]:
        oid = object_id(machine)
        return {
            entity: f"{self.s.prefix}/{component}/aemon/{oid}_{entity}/config"
            for entity, component in (
                ("anomaly", "binary_sensor"),
                ("score", "sensor"),
                ("state", "sensor"),
            )
        }

    def follow(self, changed: dict[str, MachineRuntime], now: float) -> None:
        """Announces new machines and publishes the state of those whose state or alert
        changed, or whose last update is `update_interval` old (the pipeline thread)."""
        for name, runtime in changed.items():
            shown = self._shown.get(name)
            state, alert = runtime.shown_state.value, runtime.tracker.state.value
            if shown is None:
                self._announce(name)
            elif (shown.state, shown.alert) == (state, alert) and (
                now - shown.at < self.s.update_interval
            ):
                continue
            self.publisher.publish_retained(self.state_topic(name), state_document(runtime))
            self._shown[name] = _Shown(state, alert, now)

    def forget(self, machine: str) -> None:
        """Removes the machine's device from Home Assistant and its state document."""
        if self._shown.pop(machine, None) is None:
            return
        for topic in (*self.config_topics(machine).values(), self.state_topic(machine)):
            self.publisher.publish_retained(topic, None)

    def _announce(self, machine: str) -> None:
        for entity, topic in self.config_topics(machine).items():
            self.publisher.publish_retained(topic, self.discovery(machine, entity))

    def discovery(self, machine: str, entity: str) -> dict[str, Any]:
        """The discovery document of one of the machine's entities."""
        oid = object_id(machine)
        common: dict[str, Any] = {
            "unique_id": f"aemon_{oid}_{entity}",
            "state_topic": self.state_topic(machine),
            "availability_topic": self.publisher.status_topic,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": {
                "identifiers": [f"aemon_{oid}"],
                "name": machine,
                "manufacturer": "aemon",
                "model": "anomaly monitor",
            },
        }
        if entity == "anomaly":
            return common | {
                "name": "Anomaly",
                "device_class": "problem",
                "value_template": "{{ 'ON' if value_json.alert == 'firing' else 'OFF' }}",
                "payload_on": "ON",
                "payload_off": "OFF",
                "json_attributes_topic": self.publisher.alert_topic(machine),
            }
        if entity == "score":
            return common | {
                "name": "Score",
                "state_class": "measurement",
                "suggested_display_precision": 2,
                "value_template": "{{ value_json.score_ratio }}",
            }
        return common | {
            "name": "State",
            "device_class": "enum",
            "options": [s.value for s in MachineState],
            "value_template": "{{ value_json.state }}",
        }


def state_document(runtime: MachineRuntime) -> dict[str, Any]:
    """The machine's retained state: what Home Assistant's entities read."""
    detector, score = runtime.detector, runtime.last_score
    threshold = detector.threshold if detector is not None else None
    ratio = None
    if score is not None and threshold:
        ratio = round(score / threshold, 4)
    return {
        "machine": runtime.name,
        "state": runtime.shown_state.value,
        "alert": runtime.tracker.state.value,
        "alert_id": runtime.tracker.alert_id,
        "score": None if score is None else round(score, 6),
        "threshold": None if threshold is None else round(threshold, 6),
        "score_ratio": ratio,
        "model_version": detector.version if detector is not None else None,
        "scored_until": rfc3339(runtime.scored_until),
    }

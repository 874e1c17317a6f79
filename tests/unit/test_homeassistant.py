"""Home Assistant discovery documents: only documented fields, templates that read the
state document right, one announcement a machine, throttled state, a clean removal."""

from __future__ import annotations

from typing import Any

import jinja2
import orjson
import pytest
from prometheus_client import CollectorRegistry

from service.core.config import HomeAssistantSettings, Settings
from service.core.metrics import Metrics
from service.core.types import Score
from service.stream.homeassistant import HomeAssistant, state_document
from service.stream.machines import MachineRuntime
from service.stream.publish import Publisher

# The configuration variables of Home Assistant's MQTT binary sensor and sensor
# (home-assistant.io/integrations/binary_sensor.mqtt, /sensor.mqtt) that aemon may use.
COMMON = {
    "availability_topic", "payload_available", "payload_not_available", "device",
    "name", "unique_id", "state_topic", "value_template", "json_attributes_topic",
    "device_class", "icon", "entity_category", "qos", "enabled_by_default",
}  # fmt: skip
DOCUMENTED = {
    "binary_sensor": COMMON | {"payload_on", "payload_off", "off_delay", "expire_after"},
    "sensor": COMMON
    | {"state_class", "unit_of_measurement", "suggested_display_precision", "options"},
}
DEVICE = {"identifiers", "name", "manufacturer", "model", "sw_version", "configuration_url"}
MACHINE = "line 2/pump.1"


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool]] = []

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.sent.append((topic, payload, retain))


def wired() -> tuple[HomeAssistant, Sink, MachineRuntime]:
    sink = Sink()
    publisher = Publisher(sink, "aemon", Metrics(CollectorRegistry()))
    ha = HomeAssistant(HomeAssistantSettings(enabled=True, update_interval=30.0), publisher)
    runtime = MachineRuntime(MACHINE, Settings(), ("current", "pressure"), None)
    return ha, sink, runtime


def test_every_entity_uses_documented_fields_and_names_its_device() -> None:
    ha, _, _ = wired()
    for entity, topic in ha.config_topics(MACHINE).items():
        component = topic.split("/")[1]
        document = ha.discovery(MACHINE, entity)
        assert set(document) <= DOCUMENTED[component], set(document) - DOCUMENTED[component]
        assert {"unique_id", "state_topic", "availability_topic", "device"} <= set(document)
        assert set(document["device"]) <= DEVICE
        assert document["device"]["identifiers"] == ["aemon_line_2_pump_1_3e0ad5"]
        assert topic.startswith("homeassistant/")
        assert topic.endswith("/config")
    assert ha.discovery(MACHINE, "anomaly")["device_class"] == "problem"


def render(template: str, document: dict[str, Any]) -> str:
    return (
        jinja2.Environment(autoescape=False)
        .from_string(template)
        .render(value_json=orjson.loads(orjson.dumps(document)))
    )


@pytest.mark.parametrize(("scores", "anomaly"), [([0.1], "OFF"), ([5.0, 5.0, 5.0], "ON")])
def test_the_templates_read_the_state_document(scores: list[float], anomaly: str) -> None:
    ha, _, runtime = wired()
    for i, value in enumerate(scores):
        runtime.tracker.observe(
            Score(MACHINE, float(i), value, 1.0, (1.0, 0.0), runtime.sensors, 1)
        )
    runtime.last_score = scores[-1]
    document = state_document(runtime)
    assert render(ha.discovery(MACHINE, "anomaly")["value_template"], document) == anomaly
    assert render(ha.discovery(MACHINE, "state")["value_template"], document) == "learning"
    assert "learning" in ha.discovery(MACHINE, "state")["options"]
    # No model yet: the score's template renders None, which Home Assistant shows as unknown.
    assert render(ha.discovery(MACHINE, "score")["value_template"], document) == "None"


def test_a_machine_is_announced_once_and_its_state_throttled_then_removed() -> None:
    ha, sink, runtime = wired()
    ha.follow({MACHINE: runtime}, now=0.0)
    configs = ha.config_topics(MACHINE).values()
    state = ha.state_topic(MACHINE)
    assert [t for t, _, _ in sink.sent] == [*configs, state]
    assert all(retained for _, _, retained in sink.sent)
    ha.follow({MACHINE: runtime}, now=10.0)  # nothing changed, within update_interval
    assert len(sink.sent) == 4
    ha.follow({MACHINE: runtime}, now=31.0)
    assert [t for t, _, _ in sink.sent[4:]] == [state]
    for i in range(3):  # the alert fires: published at once
        runtime.tracker.observe(Score(MACHINE, float(i), 5.0, 1.0, (1.0, 0.0), runtime.sensors, 1))
    ha.follow({MACHINE: runtime}, now=32.0)
    assert orjson.loads(sink.sent[-1][1])["alert"] == "firing"
    ha.forget(MACHINE)
    removed = sink.sent[-4:]
    assert {t for t, _, _ in removed} == {*configs, state}
    assert all(payload == b"" and retained for _, payload, retained in removed)

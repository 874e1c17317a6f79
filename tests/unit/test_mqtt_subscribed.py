"""The daemon counts as subscribed (and so can be ready) only once the broker grants every
subscription: readings published before the SUBACK are not routed to it."""

from __future__ import annotations

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import CollectorRegistry

from service.core.config import MqttSettings
from service.core.metrics import Metrics
from service.transport.mqtt import MqttClient


def client() -> MqttClient:
    topics = ["plant/+", "plant/+/+"]
    return MqttClient(
        MqttSettings(), topics, "aemon/status", lambda *a: None, Metrics(CollectorRegistry())
    )


def granted(qos: int) -> ReasonCode:
    return ReasonCode(PacketTypes.SUBACK, identifier=qos)


def test_subscribed_only_when_the_suback_grants_every_topic() -> None:
    c = client()
    assert not c.subscribed.is_set()
    c._on_subscribe(c._client, None, 1, [granted(1), granted(1)], None)
    assert c.subscribed.is_set()


def test_a_refused_subscription_is_not_subscribed_and_says_why() -> None:
    c = client()
    refused = ReasonCode(PacketTypes.SUBACK, identifier=0x87)  # not authorized
    c._on_subscribe(c._client, None, 1, [granted(1), refused], None)
    assert not c.subscribed.is_set()
    assert c.last_error is not None
    assert "Not authorized" in c.last_error


def test_pausing_input_is_no_longer_subscribed() -> None:
    c = client()
    c._on_subscribe(c._client, None, 1, [granted(1)], None)
    c.pause_input()
    assert not c.subscribed.is_set()

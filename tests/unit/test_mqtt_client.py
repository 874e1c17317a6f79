"""`MqttClient` without a broker: what escapes paho's callbacks, and stopping by a deadline."""

from __future__ import annotations

import threading
import time

import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry

from service.core.config import MqttSettings
from service.core.metrics import Metrics
from service.core.threads import InjectedFaultError
from service.transport.acks import Ack
from service.transport.mqtt import MessageHandler, MqttClient
from service.transport.paho_client import FastClient


def client(handler: MessageHandler) -> MqttClient:
    return MqttClient(
        MqttSettings(), ["plant/+"], "aemon/status", handler, Metrics(CollectorRegistry())
    )


def errors(c: MqttClient) -> float | None:
    return c.metrics.registry.get_sample_value("aemon_mqtt_callback_errors_total")


def test_a_failing_handler_is_counted_and_its_message_acknowledged() -> None:
    def failing(topic: str, payload: bytes, received_at: float, ack: Ack) -> None:
        raise ValueError("a bug in the handler")

    c = client(failing)
    c._deliver("plant/pump-7", b"{}", 7, 1)  # does not raise: paho's thread would die
    assert errors(c) == 1
    assert c.acks.pending == 0


def test_the_injected_fault_escapes_to_paho() -> None:
    """The test-only fault (AEMON_TEST_FAULT=mqtt) is armed by wrapping the handler: it
    must end paho's network thread, as any exception escaping a callback would."""

    def faulty(topic: str, payload: bytes, received_at: float, ack: Ack) -> None:
        raise InjectedFaultError("AEMON_TEST_FAULT=mqtt")

    c = client(faulty)
    with pytest.raises(InjectedFaultError):
        c._deliver("plant/pump-7", b"{}", 7, 1)
    assert errors(c) == 0


def test_stop_without_a_connection_returns_at_once() -> None:
    c = client(lambda *a: None)
    began = time.monotonic()
    c.stop(began + 5)
    assert time.monotonic() - began < 1
    assert not c.connected.is_set()


def test_stopping_the_loop_waits_for_paho_only_until_the_deadline() -> None:
    c = FastClient(callback_api_version=CallbackAPIVersion.VERSION2, manual_ack=True)
    release = threading.Event()
    stuck = threading.Thread(target=release.wait, daemon=True)  # a callback that hangs
    stuck.start()
    c._thread = stuck
    try:
        began = time.monotonic()
        assert not c.stop_loop(began + 0.2)
        assert 0.15 < time.monotonic() - began < 2
        assert c._thread_terminate
    finally:
        release.set()
    assert c.stop_loop(time.monotonic() + 5)

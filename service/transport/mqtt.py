"""`MqttClient`: one MQTT 5 connection to connect, subscribe, receive and publish through.

Callbacks run on paho's network thread. They only translate and hand over, and they never
let an exception escape: one escaping exception kills paho's thread while `is_connected()`
keeps saying True, and the daemon would go blind without a sign. The one exception let
through is the test-only fault (`InjectedFaultError`, `AEMON_TEST_FAULT=mqtt`): the message
handler, wrapped to raise it at wiring time, must end paho's thread as such an exception
would, for the tests of what the daemon does then.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from service.core.config import MqttSettings
from service.core.metrics import Metrics
from service.core.threads import InjectedFaultError
from service.transport.acks import Ack, AckOrder
from service.transport.connect_errors import describe
from service.transport.mqtt_auth import authenticate
from service.transport.paho_client import FastClient
from service.transport.status import OFFLINE, ONLINE

__all__ = ["Ack", "MessageHandler", "MqttClient"]

log = structlog.get_logger(__name__)

# topic, payload, receive time, and the message's acknowledgement: the handler calls it
# exactly once, when the message's readings are processed (or at once, if there are none).
MessageHandler = Callable[[str, bytes, float, Ack], None]


class MqttClient:
    """One MQTT 5 connection: subscriptions renewed on every connect, a retained last will
    of `offline`, reconnects with backoff, and thread-safe publishing."""

    def __init__(
        self,
        settings: MqttSettings,
        subscriptions: list[str],
        status_topic: str,
        on_message: MessageHandler,
        metrics: Metrics,
        commands: str | None = None,
    ) -> None:
        self.settings = settings
        self.subscriptions = subscriptions
        # Operator commands (aemon/command/+), delivered to the same handler. Never their
        # retained messages: a command kept by the broker would run again at every start.
        self.commands = commands
        self.status_topic = status_topic
        self.handler = on_message
        self.metrics = metrics
        self.connected = threading.Event()
        # Set by the broker's SUBACK granting every subscription: until then readings
        # published are not routed to us, so the daemon is not ready.
        self.subscribed = threading.Event()
        self.last_error: str | None = None
        self._started = False
        self._stopping = False
        self._death_logged = False
        self.failed_attempts = 0
        self._refused = False  # the last CONNACK refused the connection
        self._client = self._build_client()
        self.acks = AckOrder(self._client.ack)

    def _build_client(self) -> FastClient:
        s = self.settings
        client = FastClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        client.will_set(self.status_topic, OFFLINE, qos=1, retain=True)
        authenticate(client, s)
        # paho annotates int but computes in float; int() would turn 0.5 into 0, and a zero
        # delay doubles to zero forever: a reconnect storm against a broker that is down.
        client.reconnect_delay_set(
            min_delay=s.reconnect_min,  # type: ignore[arg-type]
            max_delay=max(s.reconnect_max, s.reconnect_min),  # type: ignore[arg-type]
        )
        # Unlimited client-side queue: alerts published while the broker is away wait here.
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.deliver = self._deliver
        return client

    def start(self) -> None:
        s = self.settings
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.session_expiry
        log.info("mqtt_connecting", host=s.host, port=s.port, tls=s.tls, client_id=s.client_id)
        self._client.connect_async(
            s.host, s.port, keepalive=s.keepalive, clean_start=s.clean_start, properties=props
        )
        self._client.loop_start()
        self._started = True

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self._client.publish(topic, payload, qos=qos, retain=retain)

    def together(self) -> contextlib.AbstractContextManager[None]:
        """Acks and publishes of this thread in the body go out with one wake-up of paho's
        network thread, at its end."""
        return self._client.together()

    def pause_input(self) -> None:
        """Stop taking readings (first step of shutdown); the session keeps what follows."""
        self.subscribed.clear()
        # An UNSUBSCRIBE of no topic (the NATS input's case) is a malformed packet.
        if self.connected.is_set() and self.subscriptions:
            self._client.unsubscribe(self.subscriptions)

    def stop(self, deadline: float) -> None:
        """Publish `offline` (after every alert queued before it) and disconnect, paho's
        network thread ended by `deadline` (a `time.monotonic()` time)."""
        self._stopping = True
        # With paho's thread dead nothing would send it: waiting would only delay the exit.
        if self.connected.is_set() and self.network_thread_alive():
            info = self._client.publish(self.status_topic, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("mqtt_offline_not_published", error=str(exc))
        self._client.disconnect()
        if not self._client.stop_loop(deadline):
            log.warning("thread_not_stopped", thread="mqtt", detail="paho network thread")
        self.connected.clear()
        self.metrics.broker_connected.set(0)

    def network_thread_alive(self) -> bool:
        """Whether paho's network thread runs. One thread serves every reconnect; paho sets
        `_thread` to None when it ends, and an exception escaping a callback ends it."""
        thread = self._client.network_thread()
        alive = thread is not None and thread.is_alive()
        if not alive and self._started and not self._stopping and not self._death_logged:
            self._death_logged = True
            self.metrics.thread_failures.labels(thread="mqtt").inc()
            log.error("thread_failed", thread="mqtt", detail="paho network thread ended")
        return alive

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            if reason_code.is_failure:
                self.last_error = str(reason_code)
                self._refused = True
                # 0x86 bad user name or password, 0x87 not authorized
                auth = reason_code.value in (0x86, 0x87)
                log.error(
                    "mqtt_connect_refused",
                    reason=str(reason_code),
                    host=self.settings.host,
                    port=self.settings.port,
                    username=self.settings.username,
                    hint="check mqtt.username and the password (file) and the broker ACL"
                    if auth
                    else None,
                    retry="with backoff",
                )
                return
            self.acks.reset()
            qos = int(self.settings.qos)
            wanted = [(t, SubscribeOptions(qos=qos)) for t in self.subscriptions]
            if self.commands is not None:
                wanted.append((self.commands, SubscribeOptions(qos=1, retainHandling=2)))
            client.subscribe(wanted)
            client.publish(self.status_topic, ONLINE, qos=1, retain=True)
            self.connected.set()
            self._refused = False
            self.last_error = None
            self.failed_attempts = 0
            self.metrics.broker_connected.set(1)
            log.info(
                "mqtt_connected",
                session_present=flags.session_present,
                subscriptions=self.subscriptions,
            )
        except Exception:
            self.metrics.callback_errors.inc()
            log.exception("mqtt_on_connect_failed")

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        try:
            refused = [str(rc) for rc in reason_codes if rc.is_failure]
            if refused:
                self.last_error = f"subscription refused: {', '.join(refused)}"
                log.error("mqtt_subscribe_refused", reasons=refused, topics=self.subscriptions)
                return
            self.subscribed.set()
        except Exception:
            self.metrics.callback_errors.inc()
            log.exception("mqtt_on_subscribe_failed")

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            was_connected = self.connected.is_set()
            self.connected.clear()
            self.subscribed.clear()
            self.metrics.broker_connected.set(0)
            if was_connected:
                log.warning("mqtt_disconnected", reason=str(reason_code))
            elif self._refused:
                # The broker closing the socket after its refusal, which is logged already
                # (paho names this close "Protocol error", which would mislead).
                self._refused = False
            else:
                self.last_error = f"closed by the broker before it accepted: {reason_code}"
                log.warning("mqtt_connect_failed", cause="closed", reason=str(reason_code))
        except Exception:
            self.metrics.callback_errors.inc()
            log.exception("mqtt_on_disconnect_failed")

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        """The TCP/TLS connection could not be made; paho retries with its backoff."""
        try:
            self.failed_attempts += 1
            self._refused = False
            s = self.settings
            failure = describe(self._client.connect_error, s.host, s.port)
            self.last_error = failure.text
            log.warning(
                "mqtt_connect_failed",
                cause=failure.cause,
                reason=failure.reason,
                hint=failure.hint,
                host=s.host,
                port=s.port,
                tls=s.tls,
                attempt=self.failed_attempts,
            )
        except Exception:
            self.metrics.callback_errors.inc()
            log.exception("mqtt_on_connect_fail_failed")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._deliver(message.topic, bytes(message.payload), message.mid, message.qos)

    def _deliver(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        ack = self.acks.track(mid, qos)
        try:
            self.handler(topic, payload, time.time(), ack)
        except InjectedFaultError:
            raise  # test-only (AEMON_TEST_FAULT=mqtt): it ends paho's thread, see above
        except Exception:
            ack()
            self.metrics.callback_errors.inc()
            log.exception("mqtt_on_message_failed", topic=topic)

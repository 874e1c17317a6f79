"""aemon as a Sparkplug 3.0 primary host application: its STATE message.

`spBv1.0/STATE/<host_id>` carries `{"online": true, "timestamp": <ms>}`, retained at QoS 1
once connected, and `{"online": false, "timestamp": <the same ms>}` as the last will and on
a clean stop, so edge nodes configured to wait for their primary host see aemon come and
go. MQTT allows one will per connection and aemon's main one carries `aemon/status`: the
STATE lives on a connection of its own, authenticated as the main one (`[mqtt]`).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from service.core.config import MqttSettings
from service.transport.mqtt_auth import authenticate

log = structlog.get_logger(__name__)


def state_topic(host_id: str) -> str:
    return f"spBv1.0/STATE/{host_id}"


class SparkplugHost:
    def __init__(self, settings: MqttSettings, host_id: str) -> None:
        self.settings = settings
        self.topic = state_topic(host_id)
        # One timestamp for a session's birth and its will: edge nodes match the two.
        self.timestamp = int(time.time() * 1000)
        client_id = f"{settings.client_id}-spb-host" if settings.client_id else ""
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.will_set(self.topic, self._state(False), qos=1, retain=True)
        authenticate(self._client, settings)
        self._client.reconnect_delay_set(1, max(int(settings.reconnect_max), 1))
        self._client.on_connect = self._on_connect

    def _state(self, online: bool) -> bytes:
        return orjson.dumps({"online": online, "timestamp": self.timestamp})

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if not reason.is_failure:  # paho's thread: publish only, nothing that can raise
            client.publish(self.topic, self._state(True), qos=1, retain=True)
            log.info("sparkplug_host_online", topic=self.topic)

    def start(self) -> None:
        s = self.settings
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive)
        self._client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        """Says offline (retained) and disconnects."""
        info = self._client.publish(self.topic, self._state(False), qos=1, retain=True)
        if self._client.is_connected():
            info.wait_for_publish(timeout)
        self._client.disconnect()
        self._client.loop_stop()

"""Credentials and TLS of an MQTT connection, from `[mqtt]`: every connection aemon opens
to the broker authenticates the same way."""

from __future__ import annotations

import ssl

import paho.mqtt.client as paho

from service.core.config import MqttSettings


def authenticate(client: paho.Client, s: MqttSettings) -> None:
    password = s.resolved_password()
    if s.username is not None or password is not None:
        client.username_pw_set(s.username, password)
    if s.tls:
        client.tls_set(
            ca_certs=str(s.ca_file) if s.ca_file else None,
            certfile=str(s.cert_file) if s.cert_file else None,
            keyfile=str(s.key_file) if s.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )

"""A connection that cannot be made says why, against a real Mosquitto: the certificate
check that failed (unknown CA, expired, wrong host name) or the refused connection, in the
log and in /readyz."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from service.core.config import MqttSettings
from service.core.metrics import Metrics
from service.transport.mqtt import MqttClient
from tests.integration.test_tls import Pki, make_pki, openssl
from tests.support import FAST_CONFIG, Daemon, Mosquitto, free_port, running, wait_until


def expired_cert(directory: Path, pki: Pki) -> Path:
    """A certificate for 127.0.0.1 signed by the test CA, expired since yesterday."""
    csr, cert, ext = directory / "old.csr", directory / "old.crt", directory / "san.ext"
    openssl("req", "-new", "-key", pki.key, "-out", csr, "-subj", "/CN=127.0.0.1")
    openssl("x509", "-req", "-in", csr, "-CA", pki.ca, "-CAkey", directory / "ca.key",
            "-CAcreateserial", "-out", cert, "-days", "-1", "-extfile", ext)  # fmt: skip
    return cert


def tls_broker(directory: Path, pki: Pki, cert: Path) -> Mosquitto:
    directory.mkdir()
    extra = f"cafile {pki.ca}\ncertfile {cert}\nkeyfile {pki.key}\ntls_version tlsv1.2"
    if os.geteuid() == 0:  # else Mosquitto drops to its own user and cannot read the keys
        extra += "\nuser root"
    return Mosquitto(directory, extra).start()


@pytest.fixture(scope="module")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A broker with a good certificate, one with an expired one, the CA, and a CA that
    signed neither."""
    root = tmp_path_factory.mktemp("connect_errors")
    (root / "pki").mkdir()
    pki = make_pki(root / "pki")
    (root / "other").mkdir()
    other = make_pki(root / "other")
    good = tls_broker(root / "good", pki, pki.cert)
    expired = tls_broker(root / "expired", pki, expired_cert(root / "pki", pki))
    try:
        yield {"good": good, "expired": expired, "pki": pki, "other_ca": other.ca}
    finally:
        good.stop()
        expired.stop()


def first_failure(settings: MqttSettings) -> tuple[dict[str, Any], str | None]:
    """Connects a real client as the daemon does until its first attempt fails: the
    `mqtt_connect_failed` log record and what /readyz would show."""
    client = MqttClient(settings, ["plant/+"], "aemon/status", lambda *a: None, _metrics())
    with capture_logs() as logs:
        client.start()
        try:
            wait_until(lambda: client.failed_attempts > 0, 15, "a failed attempt")
        finally:
            client.stop(time.monotonic() + 2)
    failed = [e for e in logs if e["event"] == "mqtt_connect_failed"]
    return failed[0], client.last_error


def _metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def tls(brokers: dict[str, Any], broker: str, **overrides: Any) -> MqttSettings:
    values = {
        "host": "127.0.0.1",
        "port": brokers[broker].port,
        "tls": True,
        "ca_file": brokers["pki"].ca,
        "reconnect_min": 0.5,
        **overrides,
    }
    return MqttSettings.model_validate(values)


def test_an_expired_broker_certificate_is_named(brokers: dict[str, Any]) -> None:
    failed, error = first_failure(tls(brokers, "expired"))
    assert (failed["cause"], failed["reason"]) == ("tls_certificate", "certificate has expired")
    assert error is not None
    assert "certificate has expired" in error
    assert "renew the broker's certificate" in error


def test_a_host_name_the_certificate_is_not_for_is_named(brokers: dict[str, Any]) -> None:
    # The certificate is issued for the address 127.0.0.1 only.
    failed, error = first_failure(tls(brokers, "good", host="localhost"))
    assert failed["cause"] == "tls_certificate"
    assert "mismatch" in failed["reason"].lower()
    assert "localhost" in failed["reason"]
    assert error is not None
    assert "mqtt.host" in error


def test_a_refused_connection_is_named() -> None:
    port = free_port()  # nothing listens there
    settings = MqttSettings(host="127.0.0.1", port=port, reconnect_min=0.5)
    failed, error = first_failure(settings)
    assert failed["cause"] == "refused"
    assert error == (
        f"connection refused by 127.0.0.1:{port} (is the broker running, is the port right?)"
    )


def test_the_daemon_names_an_unknown_ca_in_its_log_and_readyz(
    tmp_path: Path, brokers: dict[str, Any]
) -> None:
    mqtt = {"tls": True, "ca_file": str(brokers["other_ca"]), "reconnect_min": 0.5}
    daemon = Daemon(tmp_path, brokers["good"].port, {**FAST_CONFIG, "mqtt": mqtt})
    with running(daemon.start(ready=False)):
        failed = wait_until(lambda: daemon.log_events("mqtt_connect_failed"), 30, "a failure")
        assert failed[0]["cause"] == "tls_certificate"
        # OpenSSL's words depend on whether the broker sends its CA along.
        reason = failed[0]["reason"]
        assert reason in {
            "unable to get local issuer certificate",
            "self-signed certificate in certificate chain",
        }
        assert "mqtt.ca_file" in failed[0]["hint"]
        status, body = daemon.get("/readyz")
        assert status == 503
        error = orjson.loads(body)["broker_error"]
        assert error.startswith(f"TLS certificate verification failed: {reason}")
        assert daemon.healthy()  # it keeps trying

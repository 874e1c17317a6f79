"""TLS, a password file and an ACL on the broker: the daemon connects and scores; a wrong
password is reported (log, /readyz) without a misleading disconnection after it, retried
with backoff, and never shown anywhere."""

from __future__ import annotations

import itertools
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support import FAST_CONFIG, Daemon, Mosquitto, find_binary, running, wait_until
from tests.synthetic import machine_rows

PASSWORD = "s3cret-Pa55-zq7"  # distinctive, so that a leak is found by a plain search
SIM_PASSWORD = "sim-pa55"
MACHINE = "pump-7"


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def make_pki(directory: Path) -> Pki:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl CLI)."""
    ca_key, ca, key, csr, cert = (
        directory / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")
    )
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
            "-days", "2", "-subj", "/CN=aemon test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    ext = directory / "san.ext"
    ext.write_text("subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", cert, "-days", "2", "-extfile", ext)  # fmt: skip
    return Pki(ca, cert, key)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, Pki]]:
    pki = make_pki(tmp_path)
    passwd = tmp_path / "passwd"
    tool = find_binary("mosquitto_passwd")
    subprocess.run([tool, "-c", "-b", passwd, "aemon", PASSWORD], check=True, timeout=10)
    subprocess.run([tool, "-b", passwd, "sim", SIM_PASSWORD], check=True, timeout=10)
    acl = tmp_path / "acl"
    acl.write_text(
        "user aemon\ntopic read plant/#\ntopic readwrite aemon/#\n\n"
        "user sim\ntopic write plant/#\ntopic read aemon/#\n"
    )
    extra = [
        f"cafile {pki.ca}",
        f"certfile {pki.cert}",
        f"keyfile {pki.key}",
        "tls_version tlsv1.2",
        "allow_anonymous false",
        f"password_file {passwd}",
        f"acl_file {acl}",
    ]
    if os.geteuid() == 0:  # else Mosquitto drops to its own user and cannot read tmp_path
        extra.append("user root")
    broker = Mosquitto(tmp_path, "\n".join(extra)).start()
    yield broker, pki
    broker.stop()


def tls_client(port: int, ca: Path) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
    client.username_pw_set("sim", SIM_PASSWORD)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def tls_daemon(workdir: Path, broker: Mosquitto, pki: Pki, password: str) -> Daemon:
    workdir.mkdir()
    secret = workdir / "password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    mqtt = {
        "tls": True,
        "ca_file": str(pki.ca),
        "username": "aemon",
        "password_file": str(secret),
        "reconnect_min": 0.5,
        "reconnect_max": 4.0,
    }
    return Daemon(workdir, broker.port, {**FAST_CONFIG, "mqtt": mqtt})


def test_daemon_scores_over_tls_with_password(
    tmp_path: Path, tls_broker: tuple[Mosquitto, Pki]
) -> None:
    broker, pki = tls_broker
    daemon = tls_daemon(tmp_path / "daemon", broker, pki, PASSWORD).start()
    client = tls_client(broker.port, pki.ca)
    try:
        last = None
        for ts, values in itertools.islice(machine_rows(time.time() - 2000, 400, seed=1), 400):
            last = client.publish(f"plant/{MACHINE}", orjson.dumps({"ts": ts, "values": values}), 1)
        assert last is not None
        last.wait_for_publish(30)
        wait_until(
            lambda: daemon.machines().get(MACHINE, {}).get("state") == "scoring", 60, "model fit"
        )
        wait_until(lambda: daemon.metric("aemon_windows_scored_total") > 0, 30, "scoring")
        assert PASSWORD not in daemon.logs()
    finally:
        client.loop_stop()
        client.disconnect()
        daemon.stop()


def test_wrong_password_is_reported_retried_and_never_shown(
    tmp_path: Path, tls_broker: tuple[Mosquitto, Pki]
) -> None:
    broker, pki = tls_broker
    wrong = "wr0ng-Pa55-xk4"
    daemon = tls_daemon(tmp_path / "daemon", broker, pki, wrong).start(ready=False)
    with running(daemon):
        refused = wait_until(
            lambda: (r := daemon.log_events("mqtt_connect_refused")) and len(r) >= 4 and r,
            30,
            "refusals, retried",
        )
        assert (
            "not authorized" in refused[0]["reason"].lower()
            or "bad user" in refused[0]["reason"].lower()
        )
        # Backoff: the delay between attempts grows (0.5 s, 1 s, 2 s, ...).
        times = [datetime.fromisoformat(r["timestamp"]).timestamp() for r in refused[:4]]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps[-1] > gaps[0] * 1.5, gaps
        status, body = daemon.get("/readyz")
        assert status == 503
        report = orjson.loads(body)
        assert report["broker_connected"] is False
        assert report["broker_error"] == refused[-1]["reason"]
        assert daemon.healthy()  # no crash: the daemon keeps trying
        # The broker closing the socket after its refusal is no second problem.
        assert daemon.log_events("mqtt_disconnected") == []
        assert "Protocol error" not in daemon.logs()
        for path in ("/", "/healthz", "/readyz", "/metrics", "/api/machines"):
            assert wrong.encode() not in daemon.get(path)[1], path
        assert wrong not in daemon.logs()

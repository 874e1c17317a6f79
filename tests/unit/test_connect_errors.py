"""Each kind of failed connection attempt gets its cause, its own words and what to check."""

from __future__ import annotations

import socket
import ssl

from service.transport.connect_errors import HINT_CA, HINT_DATES, HINT_NAME, HINT_TLS, describe


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    exc.verify_code = code
    exc.verify_message = message
    return exc


def test_certificate_failures_name_openssls_reason_and_the_setting_to_check() -> None:
    for code, message, hint in (
        (20, "unable to get local issuer certificate", HINT_CA),
        (10, "certificate has expired", HINT_DATES),
        (64, "IP address mismatch, certificate is not valid for '10.0.0.5'.", HINT_NAME),
    ):
        failure = describe(verify_error(code, message), "10.0.0.5", 8883)
        assert (failure.cause, failure.reason, failure.hint) == ("tls_certificate", message, hint)
        assert failure.text == f"TLS certificate verification failed: {message} ({hint})"


def test_socket_failures() -> None:
    wrong_port = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    wrong_port.reason = "WRONG_VERSION_NUMBER"
    assert (describe(wrong_port).cause, describe(wrong_port).hint) == ("tls", HINT_TLS)
    unresolved = describe(socket.gaierror(-2, "Name or service not known"), "broker.plant")
    assert unresolved.text == (
        "broker host name not resolved: broker.plant: Name or service not known (check mqtt.host)"
    )
    assert describe(TimeoutError("timed out"), "10.0.0.5", 1883).text.startswith(
        "connection to 10.0.0.5:1883 timed out: timed out"
    )
    assert describe(None).reason == "no reason given"

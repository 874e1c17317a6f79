"""Why a connection to the broker could not be made, in words an operator can act on.

paho reports a failed TCP or TLS connection with no reason (`on_connect_fail` takes none);
`FastClient` keeps the exception, and `describe` names its cause: the certificate check
that failed and why (`verify_message`: unknown CA, expired, wrong host name), a refused or
timed-out connection, a name that does not resolve.

>>> describe(ConnectionRefusedError(111, "Connection refused")).text
'connection refused by 127.0.0.1:1883 (is the broker running, is the port right?)'
>>> describe(TimeoutError("timed out")).cause
'timeout'
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

# What to check for OpenSSL's X509_V_ERR_* codes (x509_vfy.h) that have a remedy of their own.
HINT_CA = "set mqtt.ca_file to the CA that signed the broker's certificate"
HINT_DATES = "renew the broker's certificate, or check this host's clock"
HINT_NAME = "set mqtt.host to a name or address the broker's certificate is issued for"
VERIFY_HINTS = {
    **dict.fromkeys((2, 18, 19, 20, 21), HINT_CA),  # issuer unknown, self-signed, untrusted
    **dict.fromkeys((9, 10), HINT_DATES),  # not yet valid, expired
    **dict.fromkeys((62, 64), HINT_NAME),  # host name, IP address mismatch
}
HINT_TLS = "check mqtt.tls and mqtt.port against the broker's listener"


@dataclass(frozen=True)
class ConnectFailure:
    """A failed connection attempt: `cause` is a fixed word (for logs and alerts), `reason`
    the underlying error's own words, `hint` what to check."""

    cause: str  # tls_certificate, tls, refused, timeout, dns, network
    reason: str
    hint: str | None = None
    where: str = "127.0.0.1:1883"

    @property
    def text(self) -> str:
        """One line for /readyz."""
        lead = {
            "tls_certificate": "TLS certificate verification failed",
            "tls": "TLS handshake failed",
            "refused": f"connection refused by {self.where}",
            "timeout": f"connection to {self.where} timed out",
            "dns": "broker host name not resolved",
            "network": f"connection to {self.where} failed",
        }[self.cause]
        detail = lead if self.cause == "refused" else f"{lead}: {self.reason}"
        return f"{detail} ({self.hint})" if self.hint else detail


# Socket errors by class: the cause and what to check.
SOCKET_CAUSES: tuple[tuple[type[OSError], str, str | None], ...] = (
    (ConnectionRefusedError, "refused", "is the broker running, is the port right?"),
    (TimeoutError, "timeout", "is the broker reachable from here (firewall, route)?"),
    (socket.gaierror, "dns", "check mqtt.host"),
    (OSError, "network", None),
)


def describe(
    exc: BaseException | None, host: str = "127.0.0.1", port: int = 1883
) -> ConnectFailure:
    """The cause of a failed connection attempt, from the exception it raised (None: paho
    gave none)."""
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = VERIFY_HINTS.get(exc.verify_code)
        return ConnectFailure("tls_certificate", str(exc.verify_message), hint, where)
    if isinstance(exc, ssl.SSLError):
        return ConnectFailure("tls", str(exc.reason or exc), HINT_TLS, where)
    for kind, cause, hint in SOCKET_CAUSES:
        if isinstance(exc, kind):
            reason = exc.strerror or str(exc) or type(exc).__name__
            if cause == "dns":
                reason = f"{host}: {reason}"
            return ConnectFailure(cause, reason, hint, where)
    return ConnectFailure("network", "no reason given", None, where)

"""TLS for the agents' HTTP API, and mutual TLS between agents (docs/install.md, docs/failsafe.md).

The server asks every client for a certificate but does not insist at the handshake
(``CERT_OPTIONAL``): load balancers and monitors probe ``/primary``, ``/health`` and ``/metrics``
without one. A certificate that is presented must chain to the cluster CA, or the handshake fails.
The endpoints that act or answer for the cluster (failsafe promises, the backup stream, switchover,
pause, resume) then refuse a caller without a verified certificate, whatever token it sends.

The same settings make the client side: an agent checks its peers' server certificates against
the cluster CA (host names included) and presents its own client certificate.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass


class ApiTlsError(ValueError):
    """A certificate, key or CA file cannot be used; the message names the setting and the file."""


@dataclass(frozen=True, slots=True)
class ApiTls:
    cert: str = ""  # the server's certificate (PEM), with its chain
    key: str = ""
    ca: str = ""  # the cluster CA: client certificates must chain to it (mutual TLS)
    client_cert: str = ""  # what this agent presents to its peers; empty: cert / key
    client_key: str = ""

    @property
    def serves_tls(self) -> bool:
        return bool(self.cert)

    @property
    def mutual(self) -> bool:
        """Callers of the protected endpoints must present a certificate from ``ca``."""
        return bool(self.cert and self.ca)

    @property
    def scheme(self) -> str:
        return "https" if self.serves_tls else "http"

    def server_context(self) -> ssl.SSLContext | None:
        if not self.serves_tls:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_chain(context, self.cert, self.key, "http.tls_cert")
        if self.ca:
            _load_ca(context, self.ca)
            context.verify_mode = ssl.CERT_OPTIONAL  # health probes come without one
        return context

    def client_context(self) -> ssl.SSLContext:
        """For requests to peers' ``https://`` APIs (plain ``http://`` ones ignore it)."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca:
            _load_ca(context, self.ca)
        cert, key = (self.client_cert, self.client_key) if self.client_cert else (self.cert, self.key)
        if cert:
            _load_chain(context, cert, key, "http.tls_client_cert" if self.client_cert else "http.tls_cert")
        return context


def _load_chain(context: ssl.SSLContext, cert: str, key: str, setting: str) -> None:
    try:
        context.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as exc:
        raise ApiTlsError(f"{setting}: cannot use certificate {cert} with key {key or cert}: {exc}") from None


def _load_ca(context: ssl.SSLContext, ca: str) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ApiTlsError(f"http.tls_ca: cannot use CA file {ca}: {exc}") from None


def has_verified_peer(connection: object) -> bool:
    """The connection is TLS and its client sent a certificate that chains to the cluster CA (the
    handshake already refused any other)."""
    getpeercert = getattr(connection, "getpeercert", None)
    if getpeercert is None:
        return False
    try:
        return bool(getpeercert())
    except ValueError:  # handshake not done
        return False

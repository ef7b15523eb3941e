"""How the etcd backend talks to etcd: endpoints, channels, authentication, and one call with a
total deadline that fails over between members.

Failover: endpoints are tried in turn, starting with the last one that worked. A member that
refuses connections fails in microseconds and the next one is tried in the same call; a member
that hangs (partitioned, no leader) costs at most a part of the budget, and the next call starts
elsewhere. Every write is safe to repeat, so a retry after an unknown outcome is harmless.

Also here: the small request helpers (the KV stub, a range read, one key's read)
that the lock (``etcd.py``), its records (``etcd_records.py``) and the snapshot share.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc  # type: ignore[import-untyped,unused-ignore]
from pyetcd import etcdrpc

from dbfence.locks.errors import DcsAccessDenied, DcsUnreachable, LockError, SessionExpired

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]

# Codes after which another member may well succeed.
_RETRY_ELSEWHERE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
}
# Reconnect quickly to a member that comes back (gRPC's default backoff grows to 2 min).
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# Below this much budget another attempt is pointless.
MIN_ATTEMPT = 0.05


def range_end(prefix: bytes) -> bytes:
    """etcd range end that covers every key starting with ``prefix``."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def lease_hex(lease_id: int) -> str:
    return format(lease_id, "x") if lease_id else ""


# The request helpers of the lock (``etcd.py``) and of the keys beside it (``etcd_records.py``).


def kv_stub(channel: grpc.Channel) -> Any:
    return etcdrpc.KVStub(channel)


def range_request(key: str, prefix: bool = False) -> Any:
    """A read of ``key``, or of every key that starts with it when ``prefix``."""
    request = etcdrpc.RangeRequest(key=key.encode())
    if prefix:
        request.range_end = range_end(key.encode())
    return request


def get_key(transport: EtcdTransport, key: str, deadline: float, what: str) -> Any:
    """One read of ``key`` (its ``RangeResponse``: ``.kvs`` is empty when the key is absent)."""
    request = range_request(key)
    return transport.call(
        what,
        deadline,
        lambda ch, timeout, md: kv_stub(ch).Range(request, timeout=timeout, metadata=md),
    )


@dataclass(frozen=True)
class EtcdOptions:
    """How to reach etcd.

    ``endpoints``: ``http://host:port``, ``https://host:port`` or ``host:port``.
    TLS is used for ``https`` endpoints or whenever ``ca_cert`` is given; ``cert`` and
    ``key`` add a client certificate. ``user``/``password`` enable etcd authentication.
    """

    endpoints: tuple[str, ...]
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both cert and key")
        if (self.user is None) != (self.password is None):
            raise ValueError("etcd authentication needs both user and password")


class _Member:
    """One etcd endpoint: its channel (created lazily) and auth token."""

    def __init__(self, url: str, options: EtcdOptions) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if not parts.hostname or not parts.port:
            raise ValueError(f"etcd endpoint {url!r} must name a host and a port")
        self.label = f"{parts.hostname}:{parts.port}"
        self.secure = parts.scheme == "https" or options.ca_cert is not None
        self._options = options
        self._channel: grpc.Channel | None = None
        self.token: str | None = None
        self._lock = threading.Lock()

    def channel(self) -> grpc.Channel:
        with self._lock:
            if self._channel is None:
                if self.secure:
                    self._channel = grpc.secure_channel(self.label, self._credentials(), _CHANNEL_OPTIONS)
                else:
                    self._channel = grpc.insecure_channel(self.label, _CHANNEL_OPTIONS)
            return self._channel

    def _credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            with open(path, "rb") as handle:
                return handle.read()

        return grpc.ssl_channel_credentials(
            root_certificates=read(self._options.ca_cert),
            private_key=read(self._options.key),
            certificate_chain=read(self._options.cert),
        )

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None


class EtcdTransport:
    """Runs one gRPC call with a total deadline, failing over between members."""

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self.members = [_Member(url, options) for url in options.endpoints]
        self._preferred = 0

    @property
    def current_endpoint(self) -> str:
        return self.members[self._preferred % len(self.members)].label

    def call(self, what: str, deadline: float, rpc: Callable[[grpc.Channel, float, Metadata], T]) -> T:
        """Run ``rpc(channel, timeout, metadata)`` on members in turn until it works or time is up."""
        count = len(self.members)
        start = self._preferred
        last_error = "no attempt was possible within the timeout"
        last_label: str | None = None
        for step in range(count):
            member = self.members[(start + step) % count]
            remaining = deadline - time.monotonic()
            if remaining < MIN_ATTEMPT:
                break
            # Keep some budget for the next member unless this is the last one.
            attempt = remaining if step == count - 1 else max(MIN_ATTEMPT, remaining * 0.6)
            try:
                result = self._attempt(member, deadline, attempt, rpc)
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
                detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
                if code in _RETRY_ELSEWHERE:
                    last_error = f"{what}: {code.name} {detail}"
                    last_label = member.label
                    self._preferred = (start + step + 1) % count
                    continue
                raise _translate(what, code, detail or "", member.label) from None
            self._preferred = (start + step) % count
            return result
        raise DcsUnreachable(last_error, last_label)

    def _attempt(
        self,
        member: _Member,
        deadline: float,
        attempt: float,
        rpc: Callable[[grpc.Channel, float, Metadata], T],
    ) -> T:
        channel = member.channel()
        if self.options.user is not None and member.token is None:
            self._authenticate(member, channel, attempt)
        try:
            return rpc(channel, max(MIN_ATTEMPT, min(attempt, deadline - time.monotonic())), _md(member))
        except grpc.RpcError as exc:
            if not (isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.UNAUTHENTICATED):
                raise
            if self.options.user is None:
                raise
            # Simple tokens expire (5 minutes by default): log in again once.
            member.token = None
            self._authenticate(member, channel, deadline - time.monotonic())
            return rpc(channel, max(MIN_ATTEMPT, deadline - time.monotonic()), _md(member))

    def _authenticate(self, member: _Member, channel: grpc.Channel, timeout: float) -> None:
        request = etcdrpc.AuthenticateRequest(name=self.options.user, password=self.options.password)
        response = etcdrpc.AuthStub(channel).Authenticate(request, timeout=max(MIN_ATTEMPT, timeout))
        member.token = str(response.token)

    def close(self) -> None:
        for member in self.members:
            member.close()


def _md(member: _Member) -> Metadata:
    return (("token", member.token),) if member.token else ()


# etcd reports some credential problems as INVALID_ARGUMENT: recognise them by their text.
_AUTH_DETAILS = ("authentication failed", "user name is empty", "permission denied", "invalid auth token")


def _translate(what: str, code: grpc.StatusCode, detail: str, label: str) -> LockError:
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or any(
        text in detail for text in _AUTH_DETAILS
    ):
        return DcsAccessDenied(f"{what}: {detail} ({label})")
    if code == grpc.StatusCode.NOT_FOUND and "lease not found" in detail:
        return SessionExpired(f"{what}: etcd says {detail}")
    return DcsUnreachable(f"{what}: {code.name} {detail}", label)

"""Talking to the Consul agent: the HTTP client, per-call time budgets, errors translated.

Client library: python-consul2 (module ``consul``). Its HTTP client has one fixed
timeout; we give it a per-call budget instead (see :class:`_BudgetedHTTPClient`),
so a renew made of two requests still ends within ``call_timeout``. Every failure of a call
leaves as one of :mod:`dbfence.locks.errors` (:func:`call_within`).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import consul
import consul.base
import consul.std
import requests

from dbfence.locks.errors import DcsAccessDenied, DcsUnreachable, SessionExpired

T = TypeVar("T")
MIN_ATTEMPT = 0.05  # a call with less time left than this is not started
_BUDGET = threading.local()


class _BudgetedHTTPClient(consul.std.HTTPClient):  # type: ignore[misc,unused-ignore]
    """python-consul2's requests-based client, with the timeout taken from the caller's budget.

    ``requests`` applies the timeout to the connection and to each read; our answers are
    small, so this bounds the whole request in practice.
    """

    @property
    def timeout(self) -> float:
        deadline: float | None = getattr(_BUDGET, "deadline", None)
        if deadline is None:
            return self._default_timeout
        return max(MIN_ATTEMPT, deadline - time.monotonic())

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._default_timeout = value


@contextmanager
def _budget(deadline: float) -> Iterator[None]:
    previous = getattr(_BUDGET, "deadline", None)
    _BUDGET.deadline = deadline
    try:
        yield
    finally:
        _BUDGET.deadline = previous


@dataclass(frozen=True)
class ConsulOptions:
    """How to reach the Consul agent.

    ``address``: ``host:port``, ``http://host:port`` or ``https://host:port``.
    ``token``: ACL token (default: ``CONSUL_HTTP_TOKEN`` from the environment).
    ``ca_cert``: CA bundle to verify an https agent; ``cert``/``key``: client certificate.
    """

    address: str
    token: str | None = None
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None
    datacenter: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both cert and key")


def make_client(options: ConsulOptions, default_timeout: float) -> Any:
    parts = urlsplit(options.address if "://" in options.address else f"http://{options.address}")
    if not parts.hostname or not parts.port:
        raise ValueError(f"Consul address {options.address!r} must name a host and a port")
    verify: bool | str = options.ca_cert if options.ca_cert else True
    cert = (options.cert, options.key) if options.cert and options.key else None
    with warnings.catch_warnings():
        # python-consul2 warns about deprecated Consul APIs we never call, on every construction.
        warnings.simplefilter("ignore", DeprecationWarning)
        client = consul.Consul(
            host=parts.hostname,
            port=parts.port,
            scheme=parts.scheme,
            verify=verify,
            cert=cert,
            dc=options.datacenter,
        )
    # python-consul2 lets CONSUL_HTTP_ADDR override the address we were given: an
    # explicit address must win, so build the HTTP client ourselves.
    client.http = _BudgetedHTTPClient(parts.hostname, parts.port, parts.scheme, verify, cert, default_timeout)
    if options.token:
        client.token = options.token
    return client


def looks_like_bad_session(text: str) -> bool:
    lowered = text.lower()
    return "session" in lowered and ("invalid" in lowered or "not found" in lowered or "unknown" in lowered)


def call_within(what: str, deadline: float, fn: Callable[[], T], endpoint: str) -> T:
    """Run one python-consul2 call within ``deadline``, translating every failure into a
    :mod:`dbfence.locks.errors` error (``consul.base.NotFound`` passes: session renew handles it)."""
    if deadline - time.monotonic() < MIN_ATTEMPT:
        raise DcsUnreachable(f"{what}: no time left in the call budget", endpoint)
    try:
        with _budget(deadline):
            return fn()
    except requests.exceptions.RequestException as exc:
        raise DcsUnreachable(f"{what}: {exc.__class__.__name__}: {exc}", endpoint) from None
    except (consul.base.ACLPermissionDenied, consul.base.ACLDisabled) as exc:
        raise DcsAccessDenied(f"{what}: {exc}") from None
    except consul.base.NotFound:
        raise  # only session renew asks for 404 as an exception: it handles it
    except consul.base.ConsulException as exc:
        if looks_like_bad_session(str(exc)):
            raise SessionExpired(f"{what}: Consul says {exc}") from None
        raise DcsUnreachable(f"{what}: {exc}", endpoint) from None
    except ValueError as exc:  # a proxy answering HTML, truncated JSON...
        raise DcsUnreachable(f"{what}: unreadable answer: {exc}", endpoint) from None


def read_entry(client: Any, key: str, deadline: float, what: str, endpoint: str) -> dict[str, Any] | None:
    """One KV entry as python-consul2 decodes it (``None`` when the key is absent), within ``deadline``."""
    _, entry = call_within(what, deadline, lambda: client.kv.get(key), endpoint)
    if entry is not None and not isinstance(entry, dict):
        raise DcsUnreachable(f"{what}: unexpected answer {entry!r:.80}", endpoint)
    return entry


def consul_index(raw: object) -> int:
    try:
        return int(str(raw))
    except ValueError:
        raise DcsUnreachable(f"Consul answered without a usable X-Consul-Index ({raw!r:.40})") from None

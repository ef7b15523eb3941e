"""Helpers for the Consul stand-in tests: clients, short-TTL sessions, polling with deadlines."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import consul
from consul.base import CB

from dbfence.lab.consul_standin import ConsulStandin

T = TypeVar("T")


def client_for(standin: ConsulStandin, token: str | None = None) -> Any:
    """The real python-consul2 client pointed at the stand-in."""
    host, port = standin.http_address.rsplit(":", 1)
    return consul.Consul(host=host, port=int(port), token=token)


def create_session(client: Any, **body: Any) -> str:
    """PUT /v1/session/create through the real client's HTTP layer.

    python-consul2's ``session.create`` asserts 10 <= ttl client-side, so sub-10 s TTLs (which the
    stand-in allows via session_ttl_min) are sent as a raw body, exactly as Consul expects it.
    """
    session_id: str = client.http.put(
        CB.json(is_id=True), path="/v1/session/create", data=json.dumps(body) if body else ""
    )
    return session_id


def wait_until(
    predicate: Callable[[], T], timeout: float, interval: float = 0.01, what: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def kv_session(client: Any, key: str) -> str | None:
    _, entry = client.kv.get(key)
    if entry is None:
        return None
    session: str | None = entry.get("Session")
    return session

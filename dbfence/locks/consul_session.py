"""Consul sessions as dbfence opens them: TTL, no health checks, and the lock-delay.

Session: ``TTL = settings.ttl`` (Consul accepts 10..86400 s), ``Behavior=delete``
(when the session is invalidated, the lock key and our member record are deleted,
so a dead agent's record vanishes), bound to NO health check, and a lock-delay of at
least ``TTL - margin`` (see :func:`effective_lock_delay`). Why: the
:mod:`dbfence.locks.consul` docstring and docs/locks.md.
"""

from __future__ import annotations

import json
import math
from typing import Any

import consul.base

from dbfence.locks.base import LockSettings

# structs.MaxLockDelay: Consul silently caps a session's lock-delay at 60 s.
MAX_LOCK_DELAY = 60.0


def effective_lock_delay(settings: LockSettings) -> float:
    """The lock-delay sent to Consul: at least ``ttl - margin``, so that no rival acquires the keys of
    an invalidated session before the holder's gate deadline (last renewal send time + ttl - margin).

    ``settings.lock_delay`` only raises it. Raises ``ValueError`` when it would exceed Consul's 60 s cap.
    """
    delay = max(float(settings.lock_delay), settings.ttl - settings.margin)
    if delay > MAX_LOCK_DELAY:
        raise ValueError(
            f"Consul caps lock-delay at {MAX_LOCK_DELAY:g} s, but ttl - margin = "
            f"{settings.ttl - settings.margin:g} s (lock_delay {settings.lock_delay}) needs "
            f"{delay:g} s to keep a rival out until the holder's gate closes: lower ttl or raise margin"
        )
    return delay


def session_body(cluster: str, node: str, ttl: int, lock_delay: float, *,
                 member: bool = False) -> dict[str, Any]:
    """What ``PUT /v1/session/create`` gets: TTL, Behavior=delete, no health checks, and the
    lock-delay (none for the member session, see the :mod:`dbfence.locks.consul` docstring)."""
    # python-consul2's session.create can send ``checks`` but not NodeChecks/ServiceChecks, and
    # formats the lock-delay in whole seconds: send the body ourselves. An empty ``Checks`` stops
    # Consul binding the session to serfHealth (every version: Consul >= 1.7 then empties its
    # NodeChecks default too); the empty NodeChecks and ServiceChecks say so explicitly.
    return {
        "Name": f"dbfence-{cluster}-{node}" + ("-member" if member else ""),
        "Behavior": "delete",
        "TTL": f"{ttl}s",
        "LockDelay": f"{math.ceil((0.0 if member else lock_delay) * 1000)}ms",
        "Checks": [],
        "NodeChecks": [],
        "ServiceChecks": [],
    }


def create_session(client: Any, datacenter: str | None, body: dict[str, Any]) -> Any:
    """``PUT /v1/session/create`` with our own body; the answer is the new session's ID."""
    params = [("dc", datacenter)] if datacenter else []
    token = client.token
    headers = {"X-Consul-Token": token} if token else {}
    return client.http.put(
        consul.base.CB.json(is_id=True),
        path="/v1/session/create",
        params=params,
        headers=headers,
        data=json.dumps(body),
    )

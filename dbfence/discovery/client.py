"""Finding the primary from an application: the etcd key, or Consul's DNS/health API.

Example (etcd)::

    from dbfence.discovery import primary_address
    host, port = primary_address(cluster="orders", etcd=["http://10.0.0.21:2379", ...])
    conn = pymysql.connect(host=host, port=port, user="orders_app", password=...)

Connect to what this returns, on every (re)connect: after a failover it names the new primary's
gate. Between the old primary fencing and the new one admitting there is no primary, and this
raises :class:`NoPrimary` (retry with backoff, as on any connection error).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from dbfence.locks.errors import LockError
from dbfence.locks.factory import DcsConfig, open_lock


class NoPrimary(LookupError):
    """No node admits writes right now (a failover is in progress, or the DCS is unreachable)."""


def primary_address(cluster: str, *, etcd: list[str] | None = None, consul: str | None = None,
                    timeout: float = 1.0) -> tuple[str, int]:
    """(host, port) of the admitting primary's gate, from etcd endpoints or a Consul agent URL."""
    if (etcd is None) == (consul is None):
        raise ValueError("give exactly one of etcd= or consul=")
    if etcd is not None:
        return _from_etcd(cluster, etcd)
    assert consul is not None
    return _from_consul(cluster, consul, timeout)


def _from_etcd(cluster: str, endpoints: list[str]) -> tuple[str, int]:
    lock = open_lock(DcsConfig(kind="etcd", endpoints=tuple(endpoints)), cluster, "discovery-client")
    try:
        holder = lock.read_primary()  # type: ignore[attr-defined]
    except LockError as exc:
        raise NoPrimary(f"cannot read the primary of {cluster} from etcd: {exc}") from exc
    finally:
        lock.close()
    if holder is None:
        raise NoPrimary(f"no primary of {cluster} admits writes right now")
    return str(holder.address), int(holder.gate_port)


def _from_consul(cluster: str, agent_url: str, timeout: float) -> tuple[str, int]:
    url = f"{agent_url.rstrip('/')}/v1/health/service/{cluster}?tag=primary&passing=1"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            entries = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        raise NoPrimary(f"cannot ask Consul for the primary of {cluster}: {exc}") from exc
    if len(entries) != 1:
        raise NoPrimary(f"Consul lists {len(entries)} passing primaries of {cluster}, not one")
    service = entries[0]["Service"]
    return str(service["Address"]), int(service["Port"])

"""Registering this node's gate in Consul, so applications find the primary by DNS.

Each agent registers service ``<cluster>`` (id ``<cluster>-<node>``) on its local Consul agent
with tag ``primary`` or ``replica`` and a TTL check it keeps passing. Consul DNS answers
``primary.<cluster>.service.consul`` with the instances tagged ``primary`` whose checks pass, so
failing the check is how a fencing node leaves DNS, before it releases the lock. It leaves
DNS within moments, not at once: the agent syncs the check to the servers in the background and
DNS may answer from any server (stale reads allowed), see docs/operations.md.

A check can vanish behind our back (the Consul agent restarted without our registration, an
operator deregistered the service). python-consul2 then answers ``False`` instead of raising, so
every check update is verified and a vanished check is registered again with the current role.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["primary", "replica"]
log = logging.getLogger(__name__)


class DiscoveryUnavailable(RuntimeError):
    """The local Consul agent could not be told (unreachable, refused, or timed out)."""


@dataclass(frozen=True, slots=True)
class ServiceIdentity:
    cluster: str
    node: str
    address: str
    port: int

    @property
    def service_id(self) -> str:
        return f"{self.cluster}-{self.node}"

    @property
    def check_id(self) -> str:
        # Consul names a check defined inside a service registration "service:<id>".
        return f"service:{self.service_id}"


class ConsulCatalog:
    """The agent's registration in the local Consul agent; every call bounded by ``timeout``."""

    def __init__(self, agent_url: str, identity: ServiceIdentity, *, check_ttl: float,
                 token: str | None = None, timeout: float = 1.0) -> None:
        scheme, _, rest = agent_url.partition("://")
        host, _, port = rest.rstrip("/").rpartition(":")
        if not scheme or not host or not port.isdigit():
            raise ValueError(f"Consul agent URL must look like http://host:port, got {agent_url!r}")
        # Imported here, not at the top: consul pulls in requests (~7 MB) that an agent which
        # does not register in Consul should not carry.
        import consul  # noqa: PLC0415

        self._client = consul.Consul(host=host, port=int(port), scheme=scheme, token=token,
                                     timeout=timeout)
        self.identity = identity
        self._check_ttl = check_ttl
        self.role: Role | None = None
        self.reregistrations = 0  # how often a vanished check was registered again

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import consul  # noqa: PLC0415  (loaded by __init__ already)
        import requests  # noqa: PLC0415

        try:
            return fn(*args, **kwargs)
        except (requests.RequestException, consul.ConsulException, OSError, ValueError) as exc:
            raise DiscoveryUnavailable(f"Consul {what} failed: {exc}") from exc

    def register(self, role: Role) -> None:
        """(Re-)register with ``role``'s tag; the check starts critical until :meth:`pass_check`."""
        ident = self.identity
        ok = self._call(
            "service register", self._client.agent.service.register,
            ident.cluster, service_id=ident.service_id, address=ident.address, port=ident.port,
            tags=[role], meta={"dbfence_node": ident.node, "dbfence_role": role},
            check={"ttl": f"{self._check_ttl:g}s", "status": "critical",
                   "notes": "kept passing by the dbfence agent"},
        )
        if ok is not True:
            raise DiscoveryUnavailable(f"Consul refused to register {ident.service_id}")
        self.role = role

    def pass_check(self, note: str = "") -> None:
        self._update_check("pass", self._client.agent.check.ttl_pass, note)

    def fail_check(self, note: str) -> None:
        """Take this node out of DNS: called before the lock is released."""
        self._update_check("fail", self._client.agent.check.ttl_fail, note)

    def _update_check(self, verb: str, update: Callable[..., Any], note: str) -> None:
        check_id = self.identity.check_id
        if self._call(f"check {verb}", update, check_id, notes=note) is True:
            return
        # A 404: the agent no longer knows the check. Register again (it starts critical) and retry once.
        if self.role is None:
            raise DiscoveryUnavailable(f"Consul has no check {check_id}, and no role is known to restore")
        log.warning("Consul forgot check %s (agent restarted? service deregistered?): registering %s again",
                    check_id, self.identity.service_id)
        self.register(self.role)
        self.reregistrations += 1
        if self._call(f"check {verb}", update, check_id, notes=note) is not True:
            raise DiscoveryUnavailable(f"Consul check {check_id} vanished again right after registering it")

    def deregister(self) -> None:
        self._call("service deregister", self._client.agent.service.deregister, self.identity.service_id)
        self.role = None

    def healthy_instances(self, tag: Role) -> list[dict[str, Any]]:
        """What DNS would answer for ``<tag>.<cluster>.service.consul`` (passing instances only)."""
        _, entries = self._call("health query", self._client.health.service, self.identity.cluster,
                                tag=tag, passing=True)
        return [{"node": e["Service"].get("Meta", {}).get("dbfence_node"),
                 "address": e["Service"]["Address"], "port": e["Service"]["Port"]} for e in entries]



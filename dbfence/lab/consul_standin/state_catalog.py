"""The stand-in's catalog: its nodes, the checks the servers own on them, and the read views.

Why apart: the views (health, catalog, DNS) combine every area, and node-level failure (a node's
serfHealth, its deregistration) is how Consul ends sessions wholesale. Invariants: the stand-in's
own node always exists (deregistering it ends its sessions, and it comes back at once, as the
agent's anti-entropy would); health and DNS see a check's last *synced* status; a service's index
never slides back.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable

from dbfence.lab.consul_standin.model import (
    CRITICAL,
    PASSING,
    SERF_CHECK_ID,
    WARNING,
    CatalogNode,
    Check,
    Service,
    ServiceInstance,
    StandinConfig,
    StandinError,
)
from dbfence.lab.consul_standin.state_agent import AgentState


class CatalogState(AgentState):
    """Nodes, the checks the catalog owns on them (serfHealth), and the health and catalog views."""

    def __init__(self, config: StandinConfig, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config, clock)
        self._node_index = self._next_index()
        # Every node of the catalog, and the checks the catalog (not this agent) owns on them: each
        # node's serfHealth, set by the leader from gossip, plus checks registered via the catalog API.
        self._nodes: dict[str, CatalogNode] = {
            config.node: CatalogNode(config.node, config.node_address, self._node_index, self._node_index)
        }
        self._catalog_checks: dict[str, dict[str, Check]] = {
            config.node: {SERF_CHECK_ID: self._new_serf_check(config.node, self._node_index)}
        }
        consul_index = self._next_index()
        # The catalog of a real server lists its own "consul" service; agent/services does not.
        self._consul_service = Service(
            id="consul",
            name="consul",
            tags=(),
            address="",
            port=8300,
            meta=(),
            enable_tag_override=False,
            weight_passing=1,
            weight_warning=1,
            create_index=consul_index,
            modify_index=consul_index,
        )
        self._service_index["consul"] = consul_index
        self._catalog_index = consul_index

    @staticmethod
    def _new_serf_check(node: str, index: int) -> Check:
        return Check(
            id=SERF_CHECK_ID,
            name="Serf Health Status",
            status=PASSING,
            notes="",
            output="Agent alive and reachable",
            service_id="",
            service_name="",
            service_tags=(),
            ttl=None,
            ttl_text="",
            deregister_critical_after=None,
            create_index=index,
            modify_index=index,
            node=node,
        )

    @property
    def _serf_check(self) -> Check:
        return self._catalog_checks[self.config.node][SERF_CHECK_ID]

    def _check_by_id(self, node: str, check_id: str) -> Check | None:
        catalog_check = self._catalog_checks.get(node, {}).get(check_id)
        if catalog_check is not None or node != self.config.node:
            return catalog_check
        return self._checks.get(check_id)

    # ------------------------------------------------------------------ catalog nodes and their checks

    def catalog_register(
        self, node: str, address: str, checks: Iterable[tuple[str, str, str, str]]
    ) -> None:
        """PUT /v1/catalog/register of a node and node-level checks ``(id, name, status, output)``.

        A check going critical invalidates the sessions bound to it, as Consul's state store does;
        this is also how a test fails a node's serfHealth the way the leader would on a gossip failure.
        """
        with self.cond:
            self._catalog_register_locked(node, address, checks)

    def _catalog_register_locked(
        self, node: str, address: str, checks: Iterable[tuple[str, str, str, str]]
    ) -> None:
        index = self._next_index()
        previous = self._nodes.get(node)
        if previous is None:
            self._nodes[node] = CatalogNode(node, address, index, index)
            self._catalog_checks[node] = {}
        elif address and address != previous.address:
            self._nodes[node] = dataclasses.replace(previous, address=address, modify_index=index)
        for check_id, name, status, output in checks:
            self._set_catalog_check(node, check_id, name, status, output, index)
        self._touch_all_services(index)
        self._changed()

    def _set_catalog_check(
        self, node: str, check_id: str, name: str, status: str, output: str, index: int
    ) -> None:
        owned = self._catalog_checks[node]
        previous = owned.get(check_id)
        if previous is None:
            previous = dataclasses.replace(
                self._new_serf_check(node, index), id=check_id, name=name or check_id, output=""
            )
        owned[check_id] = dataclasses.replace(
            previous, name=name or previous.name, status=status, output=output, modify_index=index
        )
        if status == CRITICAL:
            self._invalidate_sessions_using(node, check_id)

    def set_serf_health(self, status: str, output: str, node: str | None = None) -> None:
        """Set a node's serfHealth, as Consul's leader does when gossip marks the node failed or alive."""
        node = node or self.config.node
        with self.cond:
            if node not in self._nodes:
                raise StandinError(404, f"Unknown node {node!r}")
            check = self._catalog_checks[node].get(SERF_CHECK_ID)
            if check is not None and check.status == status:
                return
            self._catalog_register_locked(node, "", [(SERF_CHECK_ID, "Serf Health Status", status, output)])

    def catalog_deregister(self, node: str, check_id: str = "") -> None:
        """PUT /v1/catalog/deregister: a node (and every session on it), or one of its checks.

        Deregistering the stand-in's own node ends its sessions; its agent re-registers it, its
        services and checks at once (Consul's anti-entropy does so within its next sync).
        """
        with self.cond:
            if node not in self._nodes:
                return  # Consul: deregistering an unknown node is a no-op
            index = self._next_index()
            if check_id:
                self._catalog_checks[node].pop(check_id, None)
                self._invalidate_sessions_using(node, check_id)
            else:
                for session_id, session in list(self._sessions.items()):
                    if session.node == node:
                        self._invalidate_session(session_id)
                if node == self.config.node:
                    self._nodes[node] = dataclasses.replace(self._nodes[node], modify_index=index)
                    self._catalog_checks[node] = {SERF_CHECK_ID: self._new_serf_check(node, index)}
                else:
                    del self._nodes[node]
                    del self._catalog_checks[node]
            self._touch_all_services(index)
            self._changed()

    def nodes(self) -> list[CatalogNode]:
        with self.cond:
            return sorted(self._nodes.values(), key=lambda n: n.name)

    # ------------------------------------------------------------------ catalog / health views

    def _instances(self, service_name: str) -> list[ServiceInstance]:
        services = [s for s in self._services.values() if s.name == service_name]
        if service_name == "consul":
            services.append(self._consul_service)
        instances = []
        synced = [self._as_synced(c) for c in self._checks.values()]
        for service in sorted(services, key=lambda s: s.id):
            own = sorted((c for c in synced if c.service_id == service.id), key=lambda c: c.id)
            node_level = sorted(
                [*(c for c in synced if not c.service_id),
                 *self._catalog_checks[self.config.node].values()],
                key=lambda c: c.id,
            )
            instances.append(ServiceInstance(service, (*node_level, *own)))
        return instances

    def service_view(
        self, service_name: str, tags: tuple[str, ...], passing_only: bool
    ) -> tuple[int, list[ServiceInstance]]:
        """health/service and catalog/service rows; the index is the service's own (never slides back)."""
        index = self._service_index.get(service_name, self._catalog_index)
        rows = [
            i
            for i in self._instances(service_name)
            # Consul matches tag filters case-insensitively (strings.EqualFold).
            if all(t.lower() in (own.lower() for own in i.service.tags) for t in tags)
            and (not passing_only or i.aggregate_status == PASSING)
        ]
        return max(index, 1), rows

    def services_view(self) -> tuple[int, dict[str, list[str]]]:
        names: dict[str, list[str]] = {"consul": []}
        for service in self._services.values():
            tags = names.setdefault(service.name, [])
            tags.extend(t for t in service.tags if t not in tags)
        return max(self._catalog_index, 1), dict(sorted(names.items()))

    def checks_view(
        self, service_name: str | None = None, state: str | None = None
    ) -> tuple[int, list[Check]]:
        catalog_owned = (c for owned in self._catalog_checks.values() for c in owned.values())
        checks = [*catalog_owned, *(self._as_synced(c) for c in self._checks.values())]
        if service_name is not None:
            checks = [c for c in checks if c.service_name == service_name]
            index = self._service_index.get(service_name, self._catalog_index)
        else:
            index = self._catalog_index
        if state is not None and state != "any":
            checks = [c for c in checks if c.status == state]
        return max(index, 1), sorted(checks, key=lambda c: c.id)

    @property
    def serf_check(self) -> Check:
        return self._serf_check

    @property
    def node_index(self) -> int:
        return self._node_index

    def dns_instances(self, service_name: str, tag: str | None) -> list[ServiceInstance]:
        """Instances DNS answers: never critical; warning too unless dns_only_passing."""
        with self.cond:
            allowed = {PASSING} if self.config.dns_only_passing else {PASSING, WARNING}
            return [
                i
                for i in self._instances(service_name)
                if (tag is None or tag in (t.lower() for t in i.service.tags))
                and i.aggregate_status in allowed
            ]

    def known_service_names(self) -> set[str]:
        with self.cond:
            return {s.name for s in self._services.values()} | {"consul"}

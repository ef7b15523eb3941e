"""The cluster-wide read routes of the stand-in (health, catalog, status) and the catalog's
node registration.

Why apart: these answer what applications and discovery see, all as blocking queries over the
catalog. Invariants: health and DNS see a check's status only once the agent synced it; a service's
index never slides back; catalog registration takes nodes and node-level checks only (services go
through the agent API), which is enough to fail a node's serfHealth as a gossip failure would.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dbfence.lab.consul_standin.http_wire import (
    JSONValue,
    Reply,
    Request,
    Route,
    checks_field,
    decode_object,
    index_headers,
    json_reply,
    pick,
    route,
    string_field,
)
from dbfence.lab.consul_standin.model import (
    CHECK_STATUSES,
    CRITICAL,
    Check,
    ServiceInstance,
    StandinError,
)
from dbfence.lab.consul_standin.route_group import RouteGroup


class CatalogRoutes(RouteGroup):
    """``/v1/health/...``, ``/v1/catalog/...`` and ``/v1/status/...``."""

    def routes(self) -> list[Route]:
        return [
            route(r"/v1/health/service/(?P<name>.+)", GET=("filter", self.health_service)),
            route(r"/v1/health/checks/(?P<name>.+)", GET=("filter", self.health_checks)),
            route(r"/v1/health/state/(?P<state>.+)", GET=("filter", self.health_state)),
            route(r"/v1/catalog/service/(?P<name>.+)", GET=("filter", self.catalog_service)),
            route(r"/v1/catalog/services", GET=("filter", self.catalog_services)),
            route(r"/v1/catalog/datacenters", GET=("none", self.catalog_datacenters)),
            route(r"/v1/catalog/nodes", GET=("filter", self.catalog_nodes)),
            route(r"/v1/status/leader", GET=("none", self.status_leader)),
            route(r"/v1/status/peers", GET=("none", self.status_peers)),
            route(r"/v1/catalog/register", PUT=("write", self.catalog_register)),
            route(r"/v1/catalog/deregister", PUT=("write", self.catalog_deregister)),
        ]

    def health_service(self, request: Request, match: re.Match[str]) -> Reply:
        name = match.group("name")
        tags = tuple(request.query.get("tag", []))
        passing = request.flag("passing")

        def rendered(rows: Sequence[ServiceInstance]) -> JSONValue:
            node = self.render.node()  # read after the wait: the node's index may have moved
            return [
                {
                    "Node": node,
                    "Service": self.render.health_service(row.service),
                    "Checks": [self.render.check(c) for c in row.checks],
                }
                for row in rows
            ]

        return self.blocking_reply(request, lambda: self.state.service_view(name, tags, passing), rendered)

    def health_checks(self, request: Request, match: re.Match[str]) -> Reply:
        name = match.group("name")
        return self.blocking_reply(request, lambda: self.state.checks_view(service_name=name),
                                   self._render_checks)

    def health_state(self, request: Request, match: re.Match[str]) -> Reply:
        wanted = match.group("state")
        if wanted not in (*CHECK_STATUSES, "any"):
            raise StandinError(400, "Bad state")
        return self.blocking_reply(request, lambda: self.state.checks_view(state=wanted), self._render_checks)

    def _render_checks(self, checks: Sequence[Check]) -> JSONValue:
        return [self.render.check(c) for c in checks]

    def catalog_service(self, request: Request, match: re.Match[str]) -> Reply:
        name = match.group("name")
        tags = tuple(request.query.get("tag", []))
        return self.blocking_reply(request, lambda: self.state.service_view(name, tags, False),
                                   lambda rows: [self.render.catalog_row(r) for r in rows])

    def catalog_services(self, request: Request, match: re.Match[str]) -> Reply:
        return self.blocking_reply(request, self.state.services_view, lambda services: services)

    def catalog_datacenters(self, request: Request, match: re.Match[str]) -> Reply:
        return json_reply([self.config.datacenter])

    def catalog_nodes(self, request: Request, match: re.Match[str]) -> Reply:
        rendered = []
        for node in self.state.nodes():
            row = self.render.node()
            if node.name != self.config.node:
                row.update(ID="", Node=node.name, Address=node.address, CreateIndex=node.create_index,
                           ModifyIndex=node.modify_index)
                row["TaggedAddresses"] = {"lan": node.address, "wan": node.address}
            rendered.append(row)
        return json_reply(rendered, headers=index_headers(self.state.node_index))

    def catalog_register(self, request: Request, match: re.Match[str]) -> Reply:
        """Nodes and node-level checks only (no services): enough to fail a node's serfHealth."""
        body = decode_object(request.body)
        node = string_field(body, "Node")
        if not node:
            raise StandinError(500, "Must provide node")  # Consul's RPC errors answer 500
        if pick(body, "Service"):
            raise StandinError(400, "the Consul stand-in registers services through /v1/agent/service only")
        checks = []
        for raw in checks_field(body):
            if string_field(raw, "ServiceID"):
                raise StandinError(400, "the Consul stand-in registers node-level catalog checks only")
            check_id = string_field(raw, "CheckID") or string_field(raw, "Name")
            if not check_id:
                raise StandinError(400, "Must provide check ID or name")
            status = string_field(raw, "Status") or CRITICAL  # Consul's default for a catalog check
            if status not in CHECK_STATUSES:
                raise StandinError(400, f'Invalid check status: "{status}"')
            checks.append((check_id, string_field(raw, "Name"), status, string_field(raw, "Output")))
        address = string_field(body, "Address")
        if not address and not pick(body, "SkipNodeUpdate"):
            raise StandinError(500, "Must provide address if SkipNodeUpdate is not set")
        if not address and node not in {n.name for n in self.state.nodes()}:
            raise StandinError(500, "Missing node registration")
        self.state.catalog_register(node, address, checks)
        return json_reply(True)

    def catalog_deregister(self, request: Request, match: re.Match[str]) -> Reply:
        body = decode_object(request.body)
        node = string_field(body, "Node")
        if not node:
            raise StandinError(500, "Must provide node")
        if string_field(body, "ServiceID"):
            raise StandinError(400, "the Consul stand-in deregisters services through /v1/agent/service only")
        self.state.catalog_deregister(node, string_field(body, "CheckID"))
        return json_reply(True)

    def status_leader(self, request: Request, match: re.Match[str]) -> Reply:
        if self.state.no_leader:
            return json_reply("")
        return json_reply(f"{self.config.node_address}:8300")

    def status_peers(self, request: Request, match: re.Match[str]) -> Reply:
        return json_reply([f"{self.config.node_address}:8300"])

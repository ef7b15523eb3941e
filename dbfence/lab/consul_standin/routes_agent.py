"""The local agent's routes of the stand-in: ``/v1/agent/service|check|checks|services|self|members``.

Why apart: the agent API is where services and their TTL checks are declared, with the most body
validation. Invariants: the stand-in runs TTL checks only (an HTTP, TCP, script... check is a 400
that says so); a new check starts critical unless its body says otherwise, as in Consul.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dbfence.lab.consul_standin.http_render import STANDIN_VERSION
from dbfence.lab.consul_standin.http_wire import (
    Reply,
    Request,
    Route,
    checks_field,
    decode_object,
    duration_field,
    json_reply,
    pick,
    route,
    string_field,
    strings_field,
)
from dbfence.lab.consul_standin.model import (
    CHECK_STATUSES,
    CRITICAL,
    PASSING,
    SERF_CHECK_ID,
    WARNING,
    CheckDefinition,
    ServiceDefinition,
    StandinError,
)
from dbfence.lab.consul_standin.route_group import RouteGroup

# Fields whose presence makes a check something other than a TTL check (the stand-in runs no probes).
_ACTIVE_CHECK_FIELDS = (
    "http",
    "tcp",
    "udp",
    "grpc",
    "args",
    "scriptargs",
    "script",
    "dockercontainerid",
    "h2ping",
    "aliasservice",
    "aliasnode",
    "osservice",
)


class AgentRoutes(RouteGroup):
    """``/v1/agent/...``: services, TTL checks, self, members."""

    def routes(self) -> list[Route]:
        return [
            route(r"/v1/agent/service/register", PUT=("write", self.agent_service_register)),
            route(r"/v1/agent/service/deregister/(?P<id>.+)", PUT=("write", self.agent_service_deregister)),
            route(r"/v1/agent/check/register", PUT=("write", self.agent_check_register)),
            route(r"/v1/agent/check/deregister/(?P<id>.+)", PUT=("write", self.agent_check_deregister)),
            route(r"/v1/agent/check/(?P<verb>pass|warn|fail)/(?P<id>.+)",
                  PUT=("write", self.agent_check_ttl)),
            route(r"/v1/agent/check/update/(?P<id>.+)", PUT=("write", self.agent_check_update)),
            route(r"/v1/agent/checks", GET=("filter", self.agent_checks)),
            route(r"/v1/agent/services", GET=("filter", self.agent_services)),
            route(r"/v1/agent/self", GET=("read", self.agent_self)),
            route(r"/v1/agent/members", GET=("filter", self.agent_members)),
        ]

    def _check_definition(
        self, raw: Mapping[str, Any], default_id: str, default_name: str
    ) -> CheckDefinition:
        active = [name for name in _ACTIVE_CHECK_FIELDS if pick(raw, name)]
        if active:
            raise StandinError(
                400,
                f"Invalid check: the Consul stand-in runs TTL checks only, not {', '.join(active)} checks",
            )
        ttl, ttl_text = duration_field(raw, "TTL")
        if ttl is None or ttl <= 0:
            raise StandinError(400, "Invalid check: TTL must be > 0 for TTL checks")
        status = string_field(raw, "Status") or CRITICAL
        if status not in CHECK_STATUSES:
            raise StandinError(400, f'Invalid check: Status "{status}" must be passing, warning or critical')
        deregister_after, _ = duration_field(raw, "DeregisterCriticalServiceAfter")
        return CheckDefinition(
            check_id=string_field(raw, "CheckID") or string_field(raw, "ID") or default_id,
            name=string_field(raw, "Name") or default_name,
            ttl=ttl,
            ttl_text=ttl_text,
            status=status,
            notes=string_field(raw, "Notes"),
            deregister_critical_after=deregister_after,
        )

    def agent_service_register(self, request: Request, match: re.Match[str]) -> Reply:
        body = decode_object(request.body)
        name = string_field(body, "Name")
        if not name:
            raise StandinError(400, "Missing service name")
        service_id = string_field(body, "ID") or name
        port = pick(body, "Port") or 0
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise StandinError(400, "Request decode failed: Port must be an integer in 0..65535")
        meta = pick(body, "Meta") or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise StandinError(400, "Request decode failed: Meta must map strings to strings")
        weights = pick(body, "Weights") or {}
        if not isinstance(weights, dict):
            raise StandinError(400, "Request decode failed: Weights must be an object")
        raw_checks = checks_field(body)
        checks = []
        for position, raw in enumerate(raw_checks, start=1):
            default_id = f"service:{service_id}" + (f":{position}" if len(raw_checks) > 1 else "")
            checks.append(self._check_definition(raw, default_id, f"Service '{name}' check"))
        definition = ServiceDefinition(
            id=service_id,
            name=name,
            tags=strings_field(body, "Tags"),
            address=string_field(body, "Address"),
            port=port,
            meta=tuple(sorted((str(k), str(v)) for k, v in meta.items())),
            enable_tag_override=bool(pick(body, "EnableTagOverride")),
            weight_passing=int(pick(weights, "Passing") or 1),
            weight_warning=int(pick(weights, "Warning") or 1),
            checks=tuple(checks),
        )
        self.state.register_service(
            definition, replace_existing_checks=request.flag("replace-existing-checks")
        )
        return Reply(200, b"", "text/plain")

    def agent_service_deregister(self, request: Request, match: re.Match[str]) -> Reply:
        self.state.deregister_service(match.group("id"))
        return Reply(200, b"", "text/plain")

    def agent_check_register(self, request: Request, match: re.Match[str]) -> Reply:
        body = decode_object(request.body)
        name = string_field(body, "Name")
        if not name:
            raise StandinError(400, "Missing check name")
        definition = self._check_definition(body, name, name)
        self.state.register_check(definition, string_field(body, "ServiceID"))
        return Reply(200, b"", "text/plain")

    def agent_check_deregister(self, request: Request, match: re.Match[str]) -> Reply:
        self.state.deregister_check(match.group("id"))
        return Reply(200, b"", "text/plain")

    def agent_check_ttl(self, request: Request, match: re.Match[str]) -> Reply:
        status = {"pass": PASSING, "warn": WARNING, "fail": CRITICAL}[match.group("verb")]
        if match.group("id") == SERF_CHECK_ID:
            # Not Consul (it answers 404: serfHealth belongs to the servers, not the agent): the stand-in's
            # way to fail its own node as a gossip failure, `consul leave` or an agent restart would.
            note = request.get("note", "") or f"Agent {status} (stand-in control)"
            self.state.set_serf_health(status, note)
            return Reply(200, b"", "text/plain")
        self.state.update_check(match.group("id"), status, request.get("note", "") or "")
        return Reply(200, b"", "text/plain")

    def agent_check_update(self, request: Request, match: re.Match[str]) -> Reply:
        body = decode_object(request.body)
        status = string_field(body, "Status")
        if status not in CHECK_STATUSES:
            raise StandinError(400, f'Invalid check status: "{status}"')
        self.state.update_check(match.group("id"), status, string_field(body, "Output"))
        return Reply(200, b"", "text/plain")

    def agent_checks(self, request: Request, match: re.Match[str]) -> Reply:
        return json_reply({c.id: self.render.check(c) for c in self.state.agent_checks()})

    def agent_services(self, request: Request, match: re.Match[str]) -> Reply:
        return json_reply({s.id: self.render.agent_service(s) for s in self.state.agent_services()})

    def agent_self(self, request: Request, match: re.Match[str]) -> Reply:
        return json_reply(
            {
                "Config": {
                    "Datacenter": self.config.datacenter,
                    "NodeName": self.config.node,
                    "NodeID": self.state.node_id,
                    "Server": True,
                    "Revision": "standin",
                    "Version": STANDIN_VERSION,
                },
                "Member": self.render.member(),
                "Meta": {"consul-network-segment": ""},
                "Stats": {"dbfence": {"standin": "true"}},
            }
        )

    def agent_members(self, request: Request, match: re.Match[str]) -> Reply:
        return json_reply([self.render.member()])

"""Consul's HTTP API (the parts dbfence uses): the dispatcher in front of the route modules.

Why: one place decides, for every request, what a real Consul server decides before any endpoint
runs: injected faults (no leader, rate limited), the datacenter, ACLs (one management token, a
deny-all anonymous token that listing endpoints filter rather than refuse). Layout: the routes live
by area in ``routes_kv.py``, ``routes_sessions.py``, ``routes_agent.py``, ``routes_catalog.py``;
their shared vocabulary in ``http_wire.py``, Consul's JSON shapes in ``http_render.py``, the server
in ``http_server.py``. Invariants: a stand-in bug answers 500 with its repr, it never drops the
connection; the control route (``/v1/standin/control``) is the stand-in's own and bypasses faults
and ACLs, so a test can always switch a fault off.
"""

from __future__ import annotations

import re
import sys

from dbfence.lab.consul_standin.http_render import Renderer
from dbfence.lab.consul_standin.http_wire import (
    JSONValue,
    Reply,
    Request,
    Route,
    decode_object,
    index_headers,
    json_reply,
    pick,
    present,
    route,
    text_reply,
)
from dbfence.lab.consul_standin.model import StandinError
from dbfence.lab.consul_standin.routes_agent import AgentRoutes
from dbfence.lab.consul_standin.routes_catalog import CatalogRoutes
from dbfence.lab.consul_standin.routes_kv import KVRoutes
from dbfence.lab.consul_standin.routes_sessions import SessionRoutes
from dbfence.lab.consul_standin.state import StandinState


class ConsulAPI:
    """Request routing and rendering; one instance per stand-in, shared by all handler threads."""

    def __init__(self, state: StandinState) -> None:
        self.state = state
        self.config = state.config
        self.render = Renderer(state)
        self._routes: list[Route] = []
        for group in (
            KVRoutes(state, self.render),
            SessionRoutes(state, self.render),
            AgentRoutes(state, self.render),
            CatalogRoutes(state, self.render),
        ):
            self._routes.extend(group.routes())
        # Not Consul: the stand-in's own fault switches (see docs/consul-standin.md).
        self._routes.append(route(r"/v1/standin/control", PUT=("none", self.standin_control)))

    # ------------------------------------------------------------------ dispatch

    def _injected_fault(self, request: Request) -> Reply | None:
        """The answers a real cluster gives while it has no leader or is shedding load."""
        if request.path == "/v1/standin/control":
            return None
        if self.state.no_leader and not request.path.startswith("/v1/status/"):
            return text_reply(500, "No cluster leader")
        if self.state.rate_limited:
            return text_reply(429, "rate limit exceeded, try again later or against a different server")
        return None

    def handle(self, request: Request) -> Reply:
        fault = self._injected_fault(request)
        if fault is not None:
            return fault
        try:
            for known in self._routes:
                match = known.pattern.match(request.path)
                if match is None:
                    continue
                entry = known.methods.get(request.method)
                if entry is None:
                    return text_reply(405, f"method {request.method} not allowed")
                access, handler = entry
                self._check_datacenter(request)
                filtered = self._authorize(request, access, match)
                if filtered is not None:
                    return filtered
                return handler(request, match)
            return text_reply(404, "404 page not found")
        except StandinError as error:
            return text_reply(error.status, error.message)
        except Exception as error:  # a stand-in bug must not kill the connection without an answer
            sys.stderr.write(f"consul-standin http: {request.method} {request.path}: {error!r}\n")
            return text_reply(500, f"consul stand-in internal error: {error!r}")

    def _check_datacenter(self, request: Request) -> None:
        dc = request.get("dc")
        if dc and dc != self.config.datacenter:
            raise StandinError(500, "No path to datacenter")

    def _authorize(self, request: Request, access: str, match: re.Match[str]) -> Reply | None:
        """ACLs with one management token and a deny-all anonymous token.

        An unknown token is "ACL not found" (403). Anonymous requests are denied (403 "Permission denied")
        except on listing endpoints, which Consul filters instead: they answer an empty result with
        X-Consul-Results-Filtered-By-ACLs.
        """
        expected = self.config.acl_token
        if expected is None or access == "none":
            return None
        token = request.token
        if token is not None:
            if token == expected:
                return None
            raise StandinError(403, "ACL not found")
        if access == "filter":
            return self._filtered_empty(request, match)
        permission = {"kv:read": "key:read", "read": "agent:read"}.get(access, "write")
        if request.path.startswith("/v1/kv/"):
            permission = "key:read" if request.method == "GET" else "key:write"
            resource = match.group("key")
        elif request.path.startswith("/v1/session/"):
            permission, resource = "session:write", self.config.node
        elif request.path.startswith("/v1/agent/"):
            permission, resource = (
                ("agent:read" if request.method == "GET" else "service:write"),
                self.config.node,
            )
        else:
            resource = request.path
        raise StandinError(
            403,
            f"Permission denied: anonymous token lacks permission '{permission}' on \"{resource}\". "
            "The anonymous token is used implicitly when a request does not specify a token.",
        )

    def _filtered_empty(self, request: Request, match: re.Match[str]) -> Reply:
        empty: JSONValue = (
            {} if request.path in ("/v1/agent/checks", "/v1/agent/services", "/v1/catalog/services") else []
        )
        headers = index_headers(1)
        headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
        return json_reply(empty, headers=headers)
    # ------------------------------------------------------------------ stand-in control

    def standin_control(self, request: Request, match: re.Match[str]) -> Reply:
        """Stand-in only: {"NoLeader": bool, "RateLimited": bool, "ReapTombstones": true}; the answer also
        counts the blocking queries parked now (a test's way to know a watcher is in place)."""
        body = decode_object(request.body)
        if present(body, "NoLeader"):
            self.state.no_leader = bool(pick(body, "NoLeader"))
        if present(body, "RateLimited"):
            self.state.rate_limited = bool(pick(body, "RateLimited"))
        reaped = self.state.reap_tombstones() if pick(body, "ReapTombstones") else 0
        return json_reply({"NoLeader": self.state.no_leader, "RateLimited": self.state.rate_limited,
                           "ReapedTombstones": reaped, "BlockedQueries": self.state.blocked_queries})

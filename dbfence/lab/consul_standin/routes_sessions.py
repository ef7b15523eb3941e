"""The session routes of the stand-in: ``/v1/session/create|destroy|renew|info|list|node``.

Why apart: a session's body decoding (checks bound by default, lock-delay units) is the subtle part
of Consul's lock protocol. Invariants: a create binds ``serfHealth`` unless the body says otherwise
(Consul >= 1.7); a lock-delay under 1000 is seconds; renew of an unknown session is 404.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from dbfence.lab.consul_standin.durations import DurationError, parse_duration
from dbfence.lab.consul_standin.http_wire import (
    JSONValue,
    Reply,
    Request,
    Route,
    decode_object,
    json_reply,
    pick,
    present,
    route,
    string_field,
    strings_field,
    text_reply,
)
from dbfence.lab.consul_standin.model import (
    SERF_CHECK_ID,
    Session,
    SessionRequest,
    StandinError,
)
from dbfence.lab.consul_standin.route_group import RouteGroup


class SessionRoutes(RouteGroup):
    """``/v1/session/...``: create, destroy, renew, info, list, node."""

    def routes(self) -> list[Route]:
        return [
            route(r"/v1/session/create", PUT=("write", self.session_create)),
            route(r"/v1/session/destroy/(?P<id>.*)", PUT=("write", self.session_destroy)),
            route(r"/v1/session/renew/(?P<id>.*)", PUT=("write", self.session_renew)),
            route(r"/v1/session/info/(?P<id>.*)", GET=("filter", self.session_info)),
            route(r"/v1/session/list", GET=("filter", self.session_list)),
            route(r"/v1/session/node/(?P<node>.*)", GET=("filter", self.session_node)),
        ]

    def session_create(self, request: Request, match: re.Match[str]) -> Reply:
        body = decode_object(request.body)
        lock_delay = 15.0
        if present(body, "LockDelay"):
            lock_delay = self._lock_delay(pick(body, "LockDelay"))
        # Consul >= 1.7 (agent/session_endpoint.go): both Checks and NodeChecks default to serfHealth, the
        # body overrides either, then an empty Checks empties NodeChecks, a Checks of just serfHealth
        # defers to NodeChecks, and an empty NodeChecks drops Checks. No field at all: bound to serfHealth.
        checks: tuple[str, ...] = (SERF_CHECK_ID,)
        node_checks: tuple[str, ...] = (SERF_CHECK_ID,)
        if present(body, "Checks"):
            checks = strings_field(body, "Checks")
        if present(body, "NodeChecks"):
            node_checks = strings_field(body, "NodeChecks")
        if not checks:
            node_checks = ()
        elif checks == (SERF_CHECK_ID,) or not node_checks:
            checks = ()
        node_checks = checks + node_checks
        service_checks_raw = pick(body, "ServiceChecks") or []
        if not isinstance(service_checks_raw, list):
            raise StandinError(400, "Request decode failed: ServiceChecks must be a list")
        service_checks = []
        for item in service_checks_raw:
            if not isinstance(item, dict) or not isinstance(pick(item, "ID"), str):
                raise StandinError(400, "Request decode failed: every ServiceChecks item needs an ID")
            service_checks.append(str(pick(item, "ID")))
        session_request = SessionRequest(
            name=string_field(body, "Name"),
            node=string_field(body, "Node") or None,
            lock_delay=lock_delay,
            behavior=string_field(body, "Behavior"),
            ttl_text=string_field(body, "TTL"),
            node_checks=node_checks,
            service_checks=tuple(service_checks),
        )
        return json_reply({"ID": self.state.session_create(session_request)})

    @staticmethod
    def _lock_delay(raw: Any) -> float:
        """Consul's FixupLockDelay: a duration under 1000 ns is taken as seconds (people send 15 for 15s)."""
        if isinstance(raw, str):
            try:
                nanoseconds = parse_duration(raw) * 1e9
            except DurationError as error:
                raise StandinError(400, f"Request decode failed: {error}") from None
        elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
            nanoseconds = float(raw)
        else:
            raise StandinError(400, "Request decode failed: LockDelay must be a duration string or a number")
        if nanoseconds < 1000:
            nanoseconds *= 1e9
        return nanoseconds / 1e9

    @staticmethod
    def _session_id(match: re.Match[str]) -> str:
        session_id = match.group("id")
        if not session_id:
            raise StandinError(400, "Missing session")
        return session_id

    def session_destroy(self, request: Request, match: re.Match[str]) -> Reply:
        self.state.session_destroy(self._session_id(match))
        return json_reply(True)

    def session_renew(self, request: Request, match: re.Match[str]) -> Reply:
        session_id = self._session_id(match)
        session = self.state.session_renew(session_id)
        if session is None:
            return text_reply(404, f"Session id '{session_id}' not found")
        return json_reply([self.render.session(session)])  # Consul sets no index headers on renew

    def session_info(self, request: Request, match: re.Match[str]) -> Reply:
        session_id = self._session_id(match)
        return self.blocking_reply(request, lambda: self.state.session_get(session_id),
                                   lambda session: [self.render.session(session)] if session else [])

    def session_list(self, request: Request, match: re.Match[str]) -> Reply:
        return self.blocking_reply(request, self.state.session_list, self._render_sessions)

    def session_node(self, request: Request, match: re.Match[str]) -> Reply:
        node = match.group("node")
        return self.blocking_reply(request, lambda: self.state.session_list(node), self._render_sessions)

    def _render_sessions(self, sessions: Sequence[Session]) -> JSONValue:
        return [self.render.session(s) for s in sessions]

"""Consul's HTTP API (the parts dbfence uses) on the standard library's ThreadingHTTPServer."""

from __future__ import annotations

import base64
import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from dbfence.lab.consul_standin.durations import DurationError, parse_duration, to_nanoseconds
from dbfence.lab.consul_standin.model import (
    CHECK_STATUSES,
    CRITICAL,
    PASSING,
    SERF_CHECK_ID,
    WARNING,
    Check,
    CheckDefinition,
    KVEntry,
    Service,
    ServiceDefinition,
    ServiceInstance,
    Session,
    SessionRequest,
    StandinError,
    validate_kv_key,
)
from dbfence.lab.consul_standin.state import StandinState

JSONValue = Any
STANDIN_VERSION = "1.17.0-dbfence-standin"

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


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes

    def has(self, name: str) -> bool:
        return name in self.query

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        """Consul's boolean query flags: present and not an explicit false."""
        if name not in self.query:
            return False
        return (self.get(name) or "").lower() not in ("false", "0")

    @property
    def token(self) -> str | None:
        header = self.headers.get("x-consul-token")
        if header:
            return header
        authorization = self.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            return authorization[7:].strip()
        return self.get("token") or None


RouteHandler = Callable[[Request, "re.Match[str]"], Reply]


def _json(value: JSONValue, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(value, separators=(",", ":")).encode(), "application/json", headers or {})


def _text(status: int, message: str) -> Reply:
    return Reply(status, message.encode(), "text/plain; charset=utf-8")


def _pick(obj: Mapping[str, Any], name: str) -> Any:
    """Go's JSON decoding matches field names case-insensitively; Consul also accepts snake_case."""
    target = name.replace("_", "").lower()
    for key, value in obj.items():
        if key.replace("_", "").lower() == target:
            return value
    return None


def _present(obj: Mapping[str, Any], name: str) -> bool:
    target = name.replace("_", "").lower()
    return any(key.replace("_", "").lower() == target for key in obj)


def _decode_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError as error:
        raise StandinError(400, f"Request decode failed: {error}") from None
    if not isinstance(value, dict):
        raise StandinError(400, "Request decode failed: expected a JSON object")
    return value


def _string(obj: Mapping[str, Any], name: str, default: str = "") -> str:
    value = _pick(obj, name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise StandinError(400, f"Request decode failed: {name} must be a string")
    return value


def _strings(obj: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = _pick(obj, name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StandinError(400, f"Request decode failed: {name} must be a list of strings")
    return tuple(value)


def _duration(obj: Mapping[str, Any], name: str) -> tuple[float | None, str]:
    text = _string(obj, name)
    if not text:
        return None, ""
    try:
        return parse_duration(text), text
    except DurationError as error:
        raise StandinError(400, f"Request decode failed: {name}: {error}") from None


class ConsulAPI:
    """Request routing and rendering; one instance per stand-in, shared by all handler threads."""

    def __init__(self, state: StandinState) -> None:
        self.state = state
        self.config = state.config
        self._routes: list[tuple[re.Pattern[str], dict[str, tuple[str, RouteHandler]]]] = []
        add = self._add
        add(
            r"/v1/kv/(?P<key>.*)",
            GET=("kv:read", self.kv_get),
            PUT=("write", self.kv_put),
            DELETE=("write", self.kv_delete),
        )
        add(r"/v1/session/create", PUT=("write", self.session_create))
        add(r"/v1/session/destroy/(?P<id>.*)", PUT=("write", self.session_destroy))
        add(r"/v1/session/renew/(?P<id>.*)", PUT=("write", self.session_renew))
        add(r"/v1/session/info/(?P<id>.*)", GET=("filter", self.session_info))
        add(r"/v1/session/list", GET=("filter", self.session_list))
        add(r"/v1/session/node/(?P<node>.*)", GET=("filter", self.session_node))
        add(r"/v1/agent/service/register", PUT=("write", self.agent_service_register))
        add(r"/v1/agent/service/deregister/(?P<id>.+)", PUT=("write", self.agent_service_deregister))
        add(r"/v1/agent/check/register", PUT=("write", self.agent_check_register))
        add(r"/v1/agent/check/deregister/(?P<id>.+)", PUT=("write", self.agent_check_deregister))
        add(r"/v1/agent/check/(?P<verb>pass|warn|fail)/(?P<id>.+)", PUT=("write", self.agent_check_ttl))
        add(r"/v1/agent/check/update/(?P<id>.+)", PUT=("write", self.agent_check_update))
        add(r"/v1/agent/checks", GET=("filter", self.agent_checks))
        add(r"/v1/agent/services", GET=("filter", self.agent_services))
        add(r"/v1/agent/self", GET=("read", self.agent_self))
        add(r"/v1/agent/members", GET=("filter", self.agent_members))
        add(r"/v1/health/service/(?P<name>.+)", GET=("filter", self.health_service))
        add(r"/v1/health/checks/(?P<name>.+)", GET=("filter", self.health_checks))
        add(r"/v1/health/state/(?P<state>.+)", GET=("filter", self.health_state))
        add(r"/v1/catalog/service/(?P<name>.+)", GET=("filter", self.catalog_service))
        add(r"/v1/catalog/services", GET=("filter", self.catalog_services))
        add(r"/v1/catalog/datacenters", GET=("none", self.catalog_datacenters))
        add(r"/v1/catalog/nodes", GET=("filter", self.catalog_nodes))
        add(r"/v1/status/leader", GET=("none", self.status_leader))
        add(r"/v1/status/peers", GET=("none", self.status_peers))
        add(r"/v1/catalog/register", PUT=("write", self.catalog_register))
        add(r"/v1/catalog/deregister", PUT=("write", self.catalog_deregister))
        # Not Consul: the stand-in's own fault switches (see docs/consul-standin.md).
        add(r"/v1/standin/control", PUT=("none", self.standin_control))

    def _add(self, pattern: str, **methods: tuple[str, RouteHandler]) -> None:
        self._routes.append((re.compile(pattern + r"\Z"), methods))

    # ------------------------------------------------------------------ dispatch

    def _injected_fault(self, request: Request) -> Reply | None:
        """The answers a real cluster gives while it has no leader or is shedding load."""
        if request.path == "/v1/standin/control":
            return None
        if self.state.no_leader and not request.path.startswith("/v1/status/"):
            return _text(500, "No cluster leader")
        if self.state.rate_limited:
            return _text(429, "rate limit exceeded, try again later or against a different server")
        return None

    def handle(self, request: Request) -> Reply:
        fault = self._injected_fault(request)
        if fault is not None:
            return fault
        try:
            for pattern, methods in self._routes:
                match = pattern.match(request.path)
                if match is None:
                    continue
                entry = methods.get(request.method)
                if entry is None:
                    return _text(405, f"method {request.method} not allowed")
                access, handler = entry
                self._check_datacenter(request)
                filtered = self._authorize(request, access, match)
                if filtered is not None:
                    return filtered
                return handler(request, match)
            return _text(404, "404 page not found")
        except StandinError as error:
            return _text(error.status, error.message)
        except Exception as error:  # a stand-in bug must not kill the connection without an answer
            sys.stderr.write(f"consul-standin http: {request.method} {request.path}: {error!r}\n")
            return _text(500, f"consul stand-in internal error: {error!r}")

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
        headers = self._meta(1)
        headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
        return _json(empty, headers=headers)

    # ------------------------------------------------------------------ helpers

    def _meta(self, index: int) -> dict[str, str]:
        return {
            "X-Consul-Index": str(index),
            "X-Consul-KnownLeader": "true",
            "X-Consul-LastContact": "0",
            "X-Consul-Effective-Consistency": "leader",
        }

    def _blocking_args(self, request: Request) -> tuple[int, float | None]:
        index_text = request.get("index")
        min_index = 0
        if index_text:
            try:
                min_index = int(index_text)
            except ValueError:
                raise StandinError(400, "Invalid index") from None
            if min_index < 0:
                raise StandinError(400, "Invalid index")
        wait: float | None = None
        wait_text = request.get("wait")
        if wait_text:
            try:
                wait = parse_duration(wait_text)
            except DurationError:
                raise StandinError(400, "Invalid wait time") from None
        return min_index, wait

    def _uint(self, request: Request, name: str) -> int | None:
        text = request.get(name)
        if text is None:
            return None
        try:
            value = int(text)
        except ValueError:
            raise StandinError(500, f'strconv.ParseUint: parsing "{text}": invalid syntax') from None
        if value < 0 or value >= 2**64:
            raise StandinError(500, f'strconv.ParseUint: parsing "{text}": value out of range')
        return value

    def _conflicting(self, request: Request, *names: str) -> None:
        if sum(1 for n in names if request.has(n)) > 1:
            raise StandinError(
                400, f"Conflicting flags: {'&'.join(sorted(n for n in names if request.has(n)))}"
            )

    # ------------------------------------------------------------------ rendering

    def render_kv(self, entry: KVEntry) -> dict[str, JSONValue]:
        rendered: dict[str, JSONValue] = {
            "LockIndex": entry.lock_index,
            "Key": entry.key,
            "Flags": entry.flags,
            "Value": base64.b64encode(entry.value).decode() if entry.value else None,
        }
        if entry.session:
            rendered["Session"] = entry.session
        rendered["CreateIndex"] = entry.create_index
        rendered["ModifyIndex"] = entry.modify_index
        return rendered

    def render_session(self, session: Session) -> dict[str, JSONValue]:
        return {
            "ID": session.id,
            "Name": session.name,
            "Node": session.node,
            "LockDelay": to_nanoseconds(session.lock_delay),
            "Behavior": session.behavior,
            "TTL": session.ttl_text,
            "NodeChecks": list(session.node_checks) or None,
            "ServiceChecks": [{"ID": c, "Namespace": ""} for c in session.service_checks] or None,
            "CreateIndex": session.create_index,
            "ModifyIndex": session.modify_index,
        }

    def _tagged_addresses(self) -> dict[str, str]:
        address = self.config.node_address
        return {"lan": address, "lan_ipv4": address, "wan": address, "wan_ipv4": address}

    def render_node(self) -> dict[str, JSONValue]:
        index = self.state.node_index
        return {
            "ID": self.state.node_id,
            "Node": self.config.node,
            "Address": self.config.node_address,
            "Datacenter": self.config.datacenter,
            "TaggedAddresses": self._tagged_addresses(),
            "Meta": {"consul-network-segment": ""},
            "CreateIndex": index,
            "ModifyIndex": index,
        }

    def render_check(self, check: Check) -> dict[str, JSONValue]:
        return {
            "Node": check.node or self.config.node,
            "CheckID": check.id,
            "Name": check.name,
            "Status": check.status,
            "Notes": check.notes,
            "Output": check.output,
            "ServiceID": check.service_id,
            "ServiceName": check.service_name,
            "ServiceTags": list(check.service_tags),
            "Type": "ttl" if check.ttl is not None else "",
            "Definition": {},
            "CreateIndex": check.create_index,
            "ModifyIndex": check.modify_index,
        }

    def render_health_service(self, service: Service) -> dict[str, JSONValue]:
        return {
            "ID": service.id,
            "Service": service.name,
            "Tags": list(service.tags),
            "Address": service.address,
            "Meta": dict(service.meta),
            "Port": service.port,
            "Weights": {"Passing": service.weight_passing, "Warning": service.weight_warning},
            "EnableTagOverride": service.enable_tag_override,
            "CreateIndex": service.create_index,
            "ModifyIndex": service.modify_index,
        }

    def render_agent_service(self, service: Service) -> dict[str, JSONValue]:
        return {
            "ID": service.id,
            "Service": service.name,
            "Tags": list(service.tags),
            "Meta": dict(service.meta),
            "Port": service.port,
            "Address": service.address,
            "Weights": {"Passing": service.weight_passing, "Warning": service.weight_warning},
            "EnableTagOverride": service.enable_tag_override,
            "Datacenter": self.config.datacenter,
        }

    def render_catalog_row(self, instance: ServiceInstance) -> dict[str, JSONValue]:
        service = instance.service
        return {
            "ID": self.state.node_id,
            "Node": self.config.node,
            "Address": self.config.node_address,
            "Datacenter": self.config.datacenter,
            "TaggedAddresses": self._tagged_addresses(),
            "NodeMeta": {"consul-network-segment": ""},
            "ServiceKind": "",
            "ServiceID": service.id,
            "ServiceName": service.name,
            "ServiceTags": list(service.tags),
            "ServiceAddress": service.address,
            "ServiceMeta": dict(service.meta),
            "ServicePort": service.port,
            "ServiceWeights": {"Passing": service.weight_passing, "Warning": service.weight_warning},
            "ServiceEnableTagOverride": service.enable_tag_override,
            "CreateIndex": service.create_index,
            "ModifyIndex": service.modify_index,
        }

    # ------------------------------------------------------------------ KV

    def kv_get(self, request: Request, match: re.Match[str]) -> Reply:
        key = match.group("key")
        if key:
            validate_kv_key(key)
        min_index, wait = self._blocking_args(request)
        if request.has("keys"):
            separator = request.get("separator") or request.get("seperator") or ""
            index, keys = self.state.blocking(min_index, wait, lambda: self.state.kv_keys(key, separator))
            if not keys and key:
                return Reply(404, b"", "text/plain", self._meta(index))
            return _json(keys, headers=self._meta(index))
        if request.has("recurse"):
            index, entries = self.state.blocking(min_index, wait, lambda: self.state.kv_list(key))
            if not entries:
                return Reply(404, b"", "text/plain", self._meta(index))
            return _json([self.render_kv(e) for e in entries], headers=self._meta(index))
        if not key:
            raise StandinError(400, "Missing key name")
        index, entry = self.state.blocking(min_index, wait, lambda: self.state.kv_get(key))
        if entry is None:
            return Reply(404, b"", "text/plain", self._meta(index))
        if request.has("raw"):
            headers = self._meta(index)
            headers["X-Content-Type-Options"] = "nosniff"
            headers["Content-Security-Policy"] = "sandbox"
            return Reply(200, entry.value or b"", "text/plain", headers)
        return _json([self.render_kv(entry)], headers=self._meta(index))

    def kv_put(self, request: Request, match: re.Match[str]) -> Reply:
        key = match.group("key")
        if not key:
            raise StandinError(400, "Missing key name")
        validate_kv_key(key)
        self._conflicting(request, "cas", "acquire", "release")
        flags = self._uint(request, "flags") or 0
        cas = self._uint(request, "cas")
        if len(request.body) > self.config.kv_max_value_size:
            raise StandinError(
                413,
                f"Request body({len(request.body)} bytes) too large, "
                f"max size: {self.config.kv_max_value_size} bytes.",
            )
        value = request.body or None
        done = self.state.kv_put(
            key,
            value,
            flags,
            cas=cas,
            acquire=request.get("acquire", "") if request.has("acquire") else None,
            release=request.get("release", "") if request.has("release") else None,
        )
        return _json(done)

    def kv_delete(self, request: Request, match: re.Match[str]) -> Reply:
        key = match.group("key")
        if key:
            validate_kv_key(key)
        self._conflicting(request, "recurse", "cas")
        recurse = request.has("recurse")
        if not recurse and not key:
            raise StandinError(400, "Missing key name")
        cas = self._uint(request, "cas")
        done = self.state.kv_delete(key, recurse=recurse, cas=cas)
        return _json(done)

    # ------------------------------------------------------------------ sessions

    def session_create(self, request: Request, match: re.Match[str]) -> Reply:
        body = _decode_object(request.body)
        lock_delay = 15.0
        if _present(body, "LockDelay"):
            lock_delay = self._lock_delay(_pick(body, "LockDelay"))
        # Consul >= 1.7 (agent/session_endpoint.go): both Checks and NodeChecks default to serfHealth, the
        # body overrides either, then an empty Checks empties NodeChecks, a Checks of just serfHealth
        # defers to NodeChecks, and an empty NodeChecks drops Checks. No field at all: bound to serfHealth.
        checks: tuple[str, ...] = (SERF_CHECK_ID,)
        node_checks: tuple[str, ...] = (SERF_CHECK_ID,)
        if _present(body, "Checks"):
            checks = _strings(body, "Checks")
        if _present(body, "NodeChecks"):
            node_checks = _strings(body, "NodeChecks")
        if not checks:
            node_checks = ()
        elif checks == (SERF_CHECK_ID,) or not node_checks:
            checks = ()
        node_checks = checks + node_checks
        service_checks_raw = _pick(body, "ServiceChecks") or []
        if not isinstance(service_checks_raw, list):
            raise StandinError(400, "Request decode failed: ServiceChecks must be a list")
        service_checks = []
        for item in service_checks_raw:
            if not isinstance(item, dict) or not isinstance(_pick(item, "ID"), str):
                raise StandinError(400, "Request decode failed: every ServiceChecks item needs an ID")
            service_checks.append(str(_pick(item, "ID")))
        session_request = SessionRequest(
            name=_string(body, "Name"),
            node=_string(body, "Node") or None,
            lock_delay=lock_delay,
            behavior=_string(body, "Behavior"),
            ttl_text=_string(body, "TTL"),
            node_checks=node_checks,
            service_checks=tuple(service_checks),
        )
        return _json({"ID": self.state.session_create(session_request)})

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
        return _json(True)

    def session_renew(self, request: Request, match: re.Match[str]) -> Reply:
        session_id = self._session_id(match)
        session = self.state.session_renew(session_id)
        if session is None:
            return _text(404, f"Session id '{session_id}' not found")
        return _json([self.render_session(session)])  # Consul sets no index headers on renew

    def session_info(self, request: Request, match: re.Match[str]) -> Reply:
        session_id = self._session_id(match)
        min_index, wait = self._blocking_args(request)
        index, session = self.state.blocking(min_index, wait, lambda: self.state.session_get(session_id))
        return _json([self.render_session(session)] if session else [], headers=self._meta(index))

    def session_list(self, request: Request, match: re.Match[str]) -> Reply:
        min_index, wait = self._blocking_args(request)
        index, sessions = self.state.blocking(min_index, wait, self.state.session_list)
        return _json([self.render_session(s) for s in sessions], headers=self._meta(index))

    def session_node(self, request: Request, match: re.Match[str]) -> Reply:
        node = match.group("node")
        min_index, wait = self._blocking_args(request)
        index, sessions = self.state.blocking(min_index, wait, lambda: self.state.session_list(node))
        return _json([self.render_session(s) for s in sessions], headers=self._meta(index))

    # ------------------------------------------------------------------ agent

    def _check_definition(self, raw: Any, default_id: str, default_name: str) -> CheckDefinition:
        if not isinstance(raw, dict):
            raise StandinError(400, "Request decode failed: a check must be a JSON object")
        active = [name for name in _ACTIVE_CHECK_FIELDS if _pick(raw, name)]
        if active:
            raise StandinError(
                400,
                f"Invalid check: the Consul stand-in runs TTL checks only, not {', '.join(active)} checks",
            )
        ttl, ttl_text = _duration(raw, "TTL")
        if ttl is None or ttl <= 0:
            raise StandinError(400, "Invalid check: TTL must be > 0 for TTL checks")
        status = _string(raw, "Status") or CRITICAL
        if status not in CHECK_STATUSES:
            raise StandinError(400, f'Invalid check: Status "{status}" must be passing, warning or critical')
        deregister_after, _ = _duration(raw, "DeregisterCriticalServiceAfter")
        return CheckDefinition(
            check_id=_string(raw, "CheckID") or _string(raw, "ID") or default_id,
            name=_string(raw, "Name") or default_name,
            ttl=ttl,
            ttl_text=ttl_text,
            status=status,
            notes=_string(raw, "Notes"),
            deregister_critical_after=deregister_after,
        )

    def agent_service_register(self, request: Request, match: re.Match[str]) -> Reply:
        body = _decode_object(request.body)
        name = _string(body, "Name")
        if not name:
            raise StandinError(400, "Missing service name")
        service_id = _string(body, "ID") or name
        port = _pick(body, "Port") or 0
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise StandinError(400, "Request decode failed: Port must be an integer in 0..65535")
        meta = _pick(body, "Meta") or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise StandinError(400, "Request decode failed: Meta must map strings to strings")
        weights = _pick(body, "Weights") or {}
        if not isinstance(weights, dict):
            raise StandinError(400, "Request decode failed: Weights must be an object")
        raw_checks: list[Any] = []
        single = _pick(body, "Check")
        if single:
            raw_checks.append(single)
        many = _pick(body, "Checks") or []
        if not isinstance(many, list):
            raise StandinError(400, "Request decode failed: Checks must be a list")
        raw_checks.extend(many)
        checks = []
        for position, raw in enumerate(raw_checks, start=1):
            default_id = f"service:{service_id}" + (f":{position}" if len(raw_checks) > 1 else "")
            checks.append(self._check_definition(raw, default_id, f"Service '{name}' check"))
        definition = ServiceDefinition(
            id=service_id,
            name=name,
            tags=_strings(body, "Tags"),
            address=_string(body, "Address"),
            port=port,
            meta=tuple(sorted((str(k), str(v)) for k, v in meta.items())),
            enable_tag_override=bool(_pick(body, "EnableTagOverride")),
            weight_passing=int(_pick(weights, "Passing") or 1),
            weight_warning=int(_pick(weights, "Warning") or 1),
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
        body = _decode_object(request.body)
        name = _string(body, "Name")
        if not name:
            raise StandinError(400, "Missing check name")
        definition = self._check_definition(body, name, name)
        self.state.register_check(definition, _string(body, "ServiceID"))
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
        body = _decode_object(request.body)
        status = _string(body, "Status")
        if status not in CHECK_STATUSES:
            raise StandinError(400, f'Invalid check status: "{status}"')
        self.state.update_check(match.group("id"), status, _string(body, "Output"))
        return Reply(200, b"", "text/plain")

    def agent_checks(self, request: Request, match: re.Match[str]) -> Reply:
        return _json({c.id: self.render_check(c) for c in self.state.agent_checks()})

    def agent_services(self, request: Request, match: re.Match[str]) -> Reply:
        return _json({s.id: self.render_agent_service(s) for s in self.state.agent_services()})

    def agent_self(self, request: Request, match: re.Match[str]) -> Reply:
        return _json(
            {
                "Config": {
                    "Datacenter": self.config.datacenter,
                    "NodeName": self.config.node,
                    "NodeID": self.state.node_id,
                    "Server": True,
                    "Revision": "standin",
                    "Version": STANDIN_VERSION,
                },
                "Member": self._member(),
                "Meta": {"consul-network-segment": ""},
                "Stats": {"dbfence": {"standin": "true"}},
            }
        )

    def _member(self) -> dict[str, JSONValue]:
        return {
            "Name": self.config.node,
            "Addr": self.config.node_address,
            "Port": 8301,
            "Tags": {"dc": self.config.datacenter, "role": "consul", "build": STANDIN_VERSION},
            "Status": 1,
        }

    def agent_members(self, request: Request, match: re.Match[str]) -> Reply:
        return _json([self._member()])

    # ------------------------------------------------------------------ health and catalog

    def health_service(self, request: Request, match: re.Match[str]) -> Reply:
        name = match.group("name")
        tags = tuple(request.query.get("tag", []))
        passing = request.flag("passing")
        min_index, wait = self._blocking_args(request)
        index, rows = self.state.blocking(
            min_index, wait, lambda: self.state.service_view(name, tags, passing)
        )
        node = self.render_node()
        rendered = [
            {
                "Node": node,
                "Service": self.render_health_service(row.service),
                "Checks": [self.render_check(c) for c in row.checks],
            }
            for row in rows
        ]
        return _json(rendered, headers=self._meta(index))

    def health_checks(self, request: Request, match: re.Match[str]) -> Reply:
        name = match.group("name")
        min_index, wait = self._blocking_args(request)
        index, checks = self.state.blocking(
            min_index, wait, lambda: self.state.checks_view(service_name=name)
        )
        return _json([self.render_check(c) for c in checks], headers=self._meta(index))

    def health_state(self, request: Request, match: re.Match[str]) -> Reply:
        wanted = match.group("state")
        if wanted not in (*CHECK_STATUSES, "any"):
            raise StandinError(400, "Bad state")
        min_index, wait = self._blocking_args(request)
        index, checks = self.state.blocking(min_index, wait, lambda: self.state.checks_view(state=wanted))
        return _json([self.render_check(c) for c in checks], headers=self._meta(index))

    def catalog_service(self, request: Request, match: re.Match[str]) -> Reply:
        name = match.group("name")
        tags = tuple(request.query.get("tag", []))
        min_index, wait = self._blocking_args(request)
        index, rows = self.state.blocking(min_index, wait, lambda: self.state.service_view(name, tags, False))
        return _json([self.render_catalog_row(r) for r in rows], headers=self._meta(index))

    def catalog_services(self, request: Request, match: re.Match[str]) -> Reply:
        min_index, wait = self._blocking_args(request)
        index, services = self.state.blocking(min_index, wait, self.state.services_view)
        return _json(services, headers=self._meta(index))

    def catalog_datacenters(self, request: Request, match: re.Match[str]) -> Reply:
        return _json([self.config.datacenter])

    def catalog_nodes(self, request: Request, match: re.Match[str]) -> Reply:
        rendered = []
        for node in self.state.nodes():
            row = self.render_node()
            if node.name != self.config.node:
                row.update(ID="", Node=node.name, Address=node.address, CreateIndex=node.create_index,
                           ModifyIndex=node.modify_index)
                row["TaggedAddresses"] = {"lan": node.address, "wan": node.address}
            rendered.append(row)
        return _json(rendered, headers=self._meta(self.state.node_index))

    def catalog_register(self, request: Request, match: re.Match[str]) -> Reply:
        """Nodes and node-level checks only (no services): enough to fail a node's serfHealth."""
        body = _decode_object(request.body)
        node = _string(body, "Node")
        if not node:
            raise StandinError(500, "Must provide node")  # Consul's RPC errors answer 500
        if _pick(body, "Service"):
            raise StandinError(400, "the Consul stand-in registers services through /v1/agent/service only")
        raw_checks: list[Any] = []
        if _pick(body, "Check"):
            raw_checks.append(_pick(body, "Check"))
        raw_checks.extend(_pick(body, "Checks") or [])
        checks = []
        for raw in raw_checks:
            if not isinstance(raw, dict):
                raise StandinError(400, "Request decode failed: a check must be a JSON object")
            if _string(raw, "ServiceID"):
                raise StandinError(400, "the Consul stand-in registers node-level catalog checks only")
            check_id = _string(raw, "CheckID") or _string(raw, "Name")
            if not check_id:
                raise StandinError(400, "Must provide check ID or name")
            status = _string(raw, "Status") or CRITICAL  # Consul's default for a catalog check
            if status not in CHECK_STATUSES:
                raise StandinError(400, f'Invalid check status: "{status}"')
            checks.append((check_id, _string(raw, "Name"), status, _string(raw, "Output")))
        address = _string(body, "Address")
        if not address and not _pick(body, "SkipNodeUpdate"):
            raise StandinError(500, "Must provide address if SkipNodeUpdate is not set")
        if not address and node not in {n.name for n in self.state.nodes()}:
            raise StandinError(500, "Missing node registration")
        self.state.catalog_register(node, address, checks)
        return _json(True)

    def catalog_deregister(self, request: Request, match: re.Match[str]) -> Reply:
        body = _decode_object(request.body)
        node = _string(body, "Node")
        if not node:
            raise StandinError(500, "Must provide node")
        if _string(body, "ServiceID"):
            raise StandinError(400, "the Consul stand-in deregisters services through /v1/agent/service only")
        self.state.catalog_deregister(node, _string(body, "CheckID"))
        return _json(True)

    def standin_control(self, request: Request, match: re.Match[str]) -> Reply:
        """Stand-in only: {"NoLeader": bool, "RateLimited": bool, "ReapTombstones": true}."""
        body = _decode_object(request.body)
        if _present(body, "NoLeader"):
            self.state.no_leader = bool(_pick(body, "NoLeader"))
        if _present(body, "RateLimited"):
            self.state.rate_limited = bool(_pick(body, "RateLimited"))
        reaped = self.state.reap_tombstones() if _pick(body, "ReapTombstones") else 0
        return _json({"NoLeader": self.state.no_leader, "RateLimited": self.state.rate_limited,
                      "ReapedTombstones": reaped})

    def status_leader(self, request: Request, match: re.Match[str]) -> Reply:
        if self.state.no_leader:
            return _json("")
        return _json(f"{self.config.node_address}:8300")

    def status_peers(self, request: Request, match: re.Match[str]) -> Reply:
        return _json([f"{self.config.node_address}:8300"])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes: without TCP_NODELAY, Nagle plus delayed ACKs add ~40 ms.
    disable_nagle_algorithm = True
    server_version = "Consul-standin"
    sys_version = ""
    api: ConsulAPI
    verbose: bool = False

    def log_message(self, format: str, *args: Any) -> None:
        if self.verbose:
            sys.stderr.write("consul-standin http: " + (format % args) + "\n")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline().split(b";", 1)[0].strip()
                size = int(size_line or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self._send(_text(400, "malformed request body"))
            return
        parts = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=unquote(parts.path),
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        self._send(self.api.handle(request))

    def _send(self, reply: Reply) -> None:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.send_header("Vary", "Accept-Encoding")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = _serve  # noqa: N815 - names the stdlib dispatches on
    do_PUT = _serve  # noqa: N815
    do_DELETE = _serve  # noqa: N815
    do_POST = _serve  # noqa: N815
    do_HEAD = _serve  # noqa: N815


class StandinHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def make_http_server(api: ConsulAPI, host: str, port: int, verbose: bool = False) -> StandinHTTPServer:
    handler = type("StandinHandler", (_Handler,), {"api": api, "verbose": verbose})
    return StandinHTTPServer((host, port), handler)

"""The HTTP vocabulary every route module of the stand-in shares: what a request and a reply are,
how Consul decodes a JSON body and query arguments, and the index headers of its answers.

Why apart: the route modules (``routes_*.py``) and the dispatcher (``http_api.py``) all speak it,
and none of them owns it. Layout: :class:`Request`/:class:`Reply`/:class:`Route`; the body decoders
(Go's JSON decoding: field names match case-insensitively, snake_case too); the query parsers.
Invariants: nothing here touches the state; every malformed input raises :class:`StandinError` with
the status and message Consul gives, never a bare exception (the dispatcher would answer 500).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dbfence.lab.consul_standin.durations import DurationError, parse_duration
from dbfence.lab.consul_standin.model import StandinError

JSONValue = Any


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


@dataclass(frozen=True)
class Route:
    """A path pattern (anchored at both ends) and, per HTTP method, the ACL access and the handler."""

    pattern: re.Pattern[str]
    methods: dict[str, tuple[str, RouteHandler]]


def route(pattern: str, **methods: tuple[str, RouteHandler]) -> Route:
    return Route(re.compile(pattern + r"\Z"), methods)


def json_reply(value: JSONValue, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(value, separators=(",", ":")).encode(), "application/json", headers or {})


def text_reply(status: int, message: str) -> Reply:
    return Reply(status, message.encode(), "text/plain; charset=utf-8")


def pick(obj: Mapping[str, Any], name: str) -> Any:
    """Go's JSON decoding matches field names case-insensitively; Consul also accepts snake_case."""
    target = name.replace("_", "").lower()
    for key, value in obj.items():
        if key.replace("_", "").lower() == target:
            return value
    return None


def present(obj: Mapping[str, Any], name: str) -> bool:
    target = name.replace("_", "").lower()
    return any(key.replace("_", "").lower() == target for key in obj)


def decode_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError as error:
        raise StandinError(400, f"Request decode failed: {error}") from None
    if not isinstance(value, dict):
        raise StandinError(400, "Request decode failed: expected a JSON object")
    return value


def string_field(obj: Mapping[str, Any], name: str, default: str = "") -> str:
    value = pick(obj, name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise StandinError(400, f"Request decode failed: {name} must be a string")
    return value


def strings_field(obj: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = pick(obj, name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StandinError(400, f"Request decode failed: {name} must be a list of strings")
    return tuple(value)


def checks_field(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A registration's checks: ``Check`` (one) then ``Checks`` (a list), each a JSON object."""
    checks: list[Any] = []
    single = pick(obj, "Check")
    if single:
        checks.append(single)
    many = pick(obj, "Checks") or []
    if not isinstance(many, list):
        raise StandinError(400, "Request decode failed: Checks must be a list")
    checks.extend(many)
    if not all(isinstance(check, dict) for check in checks):
        raise StandinError(400, "Request decode failed: a check must be a JSON object")
    return checks


def duration_field(obj: Mapping[str, Any], name: str) -> tuple[float | None, str]:
    text = string_field(obj, name)
    if not text:
        return None, ""
    try:
        return parse_duration(text), text
    except DurationError as error:
        raise StandinError(400, f"Request decode failed: {name}: {error}") from None


def index_headers(index: int) -> dict[str, str]:
    return {
        "X-Consul-Index": str(index),
        "X-Consul-KnownLeader": "true",
        "X-Consul-LastContact": "0",
        "X-Consul-Effective-Consistency": "leader",
    }


def blocking_args(request: Request) -> tuple[int, float | None]:
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


def uint_arg(request: Request, name: str) -> int | None:
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


def refuse_conflicting(request: Request, *names: str) -> None:
    if sum(1 for n in names if request.has(n)) > 1:
        raise StandinError(
            400, f"Conflicting flags: {'&'.join(sorted(n for n in names if request.has(n)))}"
        )

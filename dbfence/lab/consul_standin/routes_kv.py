"""The KV routes of the stand-in: ``GET``/``PUT``/``DELETE /v1/kv/<key>``.

Why apart: KV is what the lock backend and discovery lean on most, with the most query flags. Invariants:
a missing key is 404 with the index headers (so blocking on an absent key works); a write answers
``true``/``false`` as Consul does (``false`` for a lost CAS, a held lock or a lock-delay, never an error).
"""

from __future__ import annotations

import re

from dbfence.lab.consul_standin.http_wire import (
    Reply,
    Request,
    Route,
    blocking_args,
    index_headers,
    json_reply,
    refuse_conflicting,
    route,
    uint_arg,
)
from dbfence.lab.consul_standin.model import (
    StandinError,
    validate_kv_key,
)
from dbfence.lab.consul_standin.route_group import RouteGroup


class KVRoutes(RouteGroup):
    """``/v1/kv/<key>``: GET (raw, recurse, keys), PUT (flags, cas, acquire, release), DELETE."""

    def routes(self) -> list[Route]:
        return [
            route(r"/v1/kv/(?P<key>.*)", GET=("kv:read", self.kv_get), PUT=("write", self.kv_put),
                  DELETE=("write", self.kv_delete)),
        ]

    def kv_get(self, request: Request, match: re.Match[str]) -> Reply:
        key = match.group("key")
        if key:
            validate_kv_key(key)
        min_index, wait = blocking_args(request)
        if request.has("keys"):
            separator = request.get("separator") or request.get("seperator") or ""
            index, keys = self.state.blocking(min_index, wait, lambda: self.state.kv_keys(key, separator))
            if not keys and key:
                return Reply(404, b"", "text/plain", index_headers(index))
            return json_reply(keys, headers=index_headers(index))
        if request.has("recurse"):
            index, entries = self.state.blocking(min_index, wait, lambda: self.state.kv_list(key))
            if not entries:
                return Reply(404, b"", "text/plain", index_headers(index))
            return json_reply([self.render.kv(e) for e in entries], headers=index_headers(index))
        if not key:
            raise StandinError(400, "Missing key name")
        index, entry = self.state.blocking(min_index, wait, lambda: self.state.kv_get(key))
        if entry is None:
            return Reply(404, b"", "text/plain", index_headers(index))
        if request.has("raw"):
            headers = index_headers(index)
            headers["X-Content-Type-Options"] = "nosniff"
            headers["Content-Security-Policy"] = "sandbox"
            return Reply(200, entry.value or b"", "text/plain", headers)
        return json_reply([self.render.kv(entry)], headers=index_headers(index))

    def kv_put(self, request: Request, match: re.Match[str]) -> Reply:
        key = match.group("key")
        if not key:
            raise StandinError(400, "Missing key name")
        validate_kv_key(key)
        refuse_conflicting(request, "cas", "acquire", "release")
        flags = uint_arg(request, "flags") or 0
        cas = uint_arg(request, "cas")
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
        return json_reply(done)

    def kv_delete(self, request: Request, match: re.Match[str]) -> Reply:
        key = match.group("key")
        if key:
            validate_kv_key(key)
        refuse_conflicting(request, "recurse", "cas")
        recurse = request.has("recurse")
        if not recurse and not key:
            raise StandinError(400, "Missing key name")
        cas = uint_arg(request, "cas")
        done = self.state.kv_delete(key, recurse=recurse, cas=cas)
        return json_reply(done)

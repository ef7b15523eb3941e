"""Raw Consul HTTP calls for the Consul contract tests: what an operator, the leader or a fault does.

Everything here works against a real Consul agent as well as the stand-in, except
:func:`standin_control` (the stand-in's own fault switches).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def consul_request(address: str, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
    """One HTTP call; returns (status, headers, decoded JSON body or text). Never raises on an HTTP status."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://{address}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5.0) as response:
            status, headers, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, headers, raw = error.code, dict(error.headers), error.read()
    try:
        return status, headers, json.loads(raw) if raw else None
    except ValueError:
        return status, headers, raw.decode(errors="replace")


def _ok(address: str, method: str, path: str, body: Any = None) -> Any:
    status, _, answer = consul_request(address, method, path, body)
    assert status == 200, f"{method} {path}: {status} {answer}"
    return answer


def agent_node(address: str) -> tuple[str, str]:
    """The (name, address) of the node the agent at ``address`` runs on: where its sessions live."""
    me = _ok(address, "GET", "/v1/agent/self")
    return str(me["Config"]["NodeName"]), str(me["Member"]["Addr"])


def set_serf_health(address: str, status: str) -> None:
    """Mark the agent's node serfHealth ``status`` in the catalog, as the leader does on a gossip failure."""
    node, node_address = agent_node(address)
    _ok(address, "PUT", "/v1/catalog/register", {
        "Node": node, "Address": node_address, "SkipNodeUpdate": True,
        "Check": {"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": status,
                  "Output": f"contract test: {status}"},
    })


def deregister_agent_node(address: str) -> None:
    """Deregister the agent's node (``consul leave`` does this), then register it back as a rejoin would."""
    node, node_address = agent_node(address)
    _ok(address, "PUT", "/v1/catalog/deregister", {"Node": node})
    _ok(address, "PUT", "/v1/catalog/register", {
        "Node": node, "Address": node_address,
        "Check": {"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing"},
    })


def destroy_session(address: str, session_id: str) -> None:
    assert _ok(address, "PUT", f"/v1/session/destroy/{session_id}") is True


def session_info(address: str, session_id: str) -> dict[str, Any] | None:
    sessions = _ok(address, "GET", f"/v1/session/info/{session_id}")
    return sessions[0] if sessions else None


def standin_control(address: str, **switches: bool) -> dict[str, Any]:
    """The stand-in's fault switches: NoLeader, RateLimited, ReapTombstones (not a Consul endpoint)."""
    answer: dict[str, Any] = _ok(address, "PUT", "/v1/standin/control", switches)
    return answer

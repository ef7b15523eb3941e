"""The stand-in's ACL token option: what Consul answers with and without the right token."""

from __future__ import annotations

from collections.abc import Callable

import consul
import pytest
import requests

from dbfence.lab.consul_standin import ConsulStandin
from tests.consul.standin_helpers import client_for

TOKEN = "b1gs3cr3t-0000-4000-8000-000000000001"


def test_anonymous_requests_are_denied(standin_factory: Callable[..., ConsulStandin]) -> None:
    standin = standin_factory(acl_token=TOKEN)
    anonymous = client_for(standin)
    with pytest.raises(consul.ACLPermissionDenied, match="Permission denied"):
        anonymous.kv.put("leader", "db1")
    with pytest.raises(consul.ACLPermissionDenied, match="Permission denied"):
        anonymous.kv.get("leader")
    with pytest.raises(consul.ACLPermissionDenied, match="Permission denied"):
        anonymous.session.create()
    with pytest.raises(consul.ACLPermissionDenied, match="Permission denied"):
        anonymous.agent.service.register("lab", port=3307)
    assert anonymous.status.leader() == "127.0.0.1:8300"  # status needs no ACL


def test_an_unknown_token_is_acl_not_found(standin_factory: Callable[..., ConsulStandin]) -> None:
    standin = standin_factory(acl_token=TOKEN)
    with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
        client_for(standin, token="wrong").kv.get("leader")


def test_the_token_works_by_header_and_by_query(standin_factory: Callable[..., ConsulStandin]) -> None:
    standin = standin_factory(acl_token=TOKEN)
    client = client_for(standin, token=TOKEN)
    session_id = client.session.create()
    assert client.kv.put("leader", "db1", acquire=session_id) is True
    assert client.kv.get("leader")[1]["Session"] == session_id
    response = requests.get(f"{standin.http_url}/v1/kv/leader?raw&token={TOKEN}", timeout=5)
    assert (response.status_code, response.content) == (200, b"db1")
    response = requests.get(
        f"{standin.http_url}/v1/kv/leader?raw", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    )
    assert response.status_code == 200


def test_listings_are_filtered_for_anonymous_callers(standin_factory: Callable[..., ConsulStandin]) -> None:
    standin = standin_factory(acl_token=TOKEN)
    client = client_for(standin, token=TOKEN)
    client.agent.service.register("lab", service_id="db1", port=3307, check=consul.Check.ttl("30s"))
    assert len(client.health.service("lab")[1]) == 1
    response = requests.get(f"{standin.http_url}/v1/health/service/lab", timeout=5)
    assert response.status_code == 200
    assert response.json() == []
    assert response.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"

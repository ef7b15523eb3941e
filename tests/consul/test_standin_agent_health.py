"""Agent services and TTL checks, health and catalog queries on the Consul stand-in."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import consul
import pytest
import requests
from consul.base import CB

from dbfence.lab.consul_standin import ConsulStandin
from tests.consul.standin_helpers import client_for, wait_until


def _passing_ids(client: object, service: str, tag: str | None = None) -> list[str]:
    _, rows = client.health.service(service, passing=True, tag=tag)  # type: ignore[attr-defined]
    return sorted(r["Service"]["ID"] for r in rows)


def test_register_with_ttl_check_starts_critical_and_passes_on_update(standin: ConsulStandin) -> None:
    client = client_for(standin)
    assert client.agent.service.register(
        "lab",
        service_id="lab-db1",
        address="127.0.0.11",
        port=3307,
        tags=["primary"],
        check=consul.Check.ttl("10s"),
    )
    services = client.agent.services()
    assert services["lab-db1"]["Service"] == "lab"
    assert services["lab-db1"]["Tags"] == ["primary"]
    assert services["lab-db1"]["Port"] == 3307
    check = client.agent.checks()["service:lab-db1"]
    assert (check["Status"], check["Name"], check["ServiceID"]) == (
        "critical",
        "Service 'lab' check",
        "lab-db1",
    )
    assert _passing_ids(client, "lab") == []
    _, catalog = client.catalog.service("lab")
    assert [(r["ServiceID"], r["ServiceAddress"], r["ServicePort"]) for r in catalog] == [
        ("lab-db1", "127.0.0.11", 3307)
    ]
    assert client.agent.check.ttl_pass("service:lab-db1", notes="gate admitting")
    assert _passing_ids(client, "lab") == ["lab-db1"]
    _, rows = client.health.service("lab")
    service_check = next(c for c in rows[0]["Checks"] if c["CheckID"] == "service:lab-db1")
    assert (service_check["Status"], service_check["Output"]) == ("passing", "gate admitting")
    assert [c["CheckID"] for c in rows[0]["Checks"]] == ["serfHealth", "service:lab-db1"]
    assert rows[0]["Node"]["Node"] == "standin"


def test_ttl_check_goes_critical_when_not_updated(standin: ConsulStandin) -> None:
    client = client_for(standin)
    client.agent.service.register("lab", service_id="lab-db1", port=3307, check=consul.Check.ttl("300ms"))
    client.agent.check.ttl_pass("service:lab-db1")
    passed = time.monotonic()
    assert _passing_ids(client, "lab") == ["lab-db1"]
    wait_until(lambda: _passing_ids(client, "lab") == [], timeout=2, what="TTL check expiry")
    assert time.monotonic() - passed >= 0.3
    check = client.agent.checks()["service:lab-db1"]
    assert check["Status"] == "critical"
    assert check["Output"].startswith("TTL expired")


def test_warning_is_not_passing_and_tags_filter(standin: ConsulStandin) -> None:
    client = client_for(standin)
    client.agent.service.register(
        "lab", service_id="db1", port=3307, tags=["primary"], check=consul.Check.ttl("30s")
    )
    client.agent.service.register(
        "lab", service_id="db2", port=3308, tags=["replica"], check=consul.Check.ttl("30s")
    )
    client.agent.check.ttl_pass("service:db1")
    client.agent.check.ttl_warn("service:db2", notes="lagging")
    assert _passing_ids(client, "lab") == ["db1"]
    assert _passing_ids(client, "lab", tag="replica") == []
    _, rows = client.health.service("lab", tag="replica")
    assert [r["Service"]["ID"] for r in rows] == ["db2"]
    _, catalog = client.catalog.service("lab", tag="primary")
    assert [r["ServiceID"] for r in catalog] == ["db1"]
    _, services = client.catalog.services()
    assert services == {"consul": [], "lab": ["primary", "replica"]}


def test_check_update_endpoint_and_unknown_checks(standin: ConsulStandin) -> None:
    client = client_for(standin)
    client.agent.service.register("lab", service_id="db1", port=3307, check=consul.Check.ttl("30s"))
    update = json.dumps({"Status": "passing", "Output": "all good"})
    client.http.put(CB.bool(), path="/v1/agent/check/update/service:db1", data=update)
    assert client.agent.checks()["service:db1"]["Output"] == "all good"
    with pytest.raises(consul.base.BadRequest, match="Invalid check status"):
        client.http.put(
            CB.bool(), path="/v1/agent/check/update/service:db1", data=json.dumps({"Status": "ok"})
        )
    assert client.agent.check.ttl_pass("no-such-check") is False  # 404
    response = requests.put(f"{standin.http_url}/v1/agent/check/pass/no-such-check", timeout=5)
    assert response.status_code == 404


def test_deregistration_removes_service_and_checks(standin: ConsulStandin) -> None:
    client = client_for(standin)
    client.agent.service.register("lab", service_id="db1", port=3307, check=consul.Check.ttl("30s"))
    assert client.agent.service.deregister("db1") is True
    assert client.agent.services() == {}
    assert client.agent.checks() == {}
    assert client.health.service("lab")[1] == []
    assert client.agent.service.deregister("db1") is False  # 404 for an unknown service


def test_re_registration_keeps_check_status(standin: ConsulStandin) -> None:
    client = client_for(standin)
    client.agent.service.register(
        "lab", service_id="db1", port=3307, tags=["replica"], check=consul.Check.ttl("30s")
    )
    client.agent.check.ttl_pass("service:db1")
    client.agent.service.register(
        "lab", service_id="db1", port=3307, tags=["primary"], check=consul.Check.ttl("30s")
    )
    assert _passing_ids(client, "lab", tag="primary") == ["db1"]
    assert _passing_ids(client, "lab", tag="replica") == []


def test_several_checks_get_numbered_ids_and_all_must_pass(standin: ConsulStandin) -> None:
    client = client_for(standin)
    body = {
        "Name": "lab",
        "ID": "db1",
        "Port": 3307,
        "Checks": [{"TTL": "30s"}, {"TTL": "30s", "Status": "passing"}],
    }
    client.http.put(CB.bool(), path="/v1/agent/service/register", data=json.dumps(body))
    assert sorted(client.agent.checks()) == ["service:db1:1", "service:db1:2"]
    assert _passing_ids(client, "lab") == []
    client.agent.check.ttl_pass("service:db1:1")
    assert _passing_ids(client, "lab") == ["db1"]


def test_deregister_critical_service_after(standin: ConsulStandin) -> None:
    client = client_for(standin)
    body = {
        "Name": "lab",
        "ID": "db1",
        "Port": 3307,
        "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": "300ms"},
    }
    client.http.put(CB.bool(), path="/v1/agent/service/register", data=json.dumps(body))
    registered = time.monotonic()
    wait_until(lambda: client.agent.services() == {}, timeout=2, what="reaping of the critical service")
    assert time.monotonic() - registered >= 0.3


def test_only_ttl_checks_and_valid_definitions_are_accepted(standin: ConsulStandin) -> None:
    client = client_for(standin)
    with pytest.raises(consul.base.BadRequest, match="TTL checks only"):
        client.agent.service.register("lab", check=consul.Check.http("http://127.0.0.1:1/", "1s"))
    with pytest.raises(consul.base.BadRequest, match="Missing service name"):
        client.http.put(CB.bool(), path="/v1/agent/service/register", data=json.dumps({"Port": 1}))
    with pytest.raises(consul.base.BadRequest, match="decode"):
        client.http.put(CB.bool(), path="/v1/agent/service/register", data="{not json")


def test_status_self_and_datacenter(standin_factory: Callable[..., ConsulStandin]) -> None:
    standin = standin_factory(node="db-host-1", datacenter="lab")
    client = client_for(standin)
    assert client.status.leader() == "127.0.0.1:8300"
    config = client.agent.self()["Config"]
    assert (config["NodeName"], config["Datacenter"]) == ("db-host-1", "lab")
    assert client.catalog.datacenters() == ["lab"]
    with pytest.raises(consul.ConsulException, match="No path to datacenter"):
        client.kv.get("k", dc="elsewhere")

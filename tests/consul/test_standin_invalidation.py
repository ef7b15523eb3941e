"""Consul's session invalidation paths on the stand-in: bound checks (serfHealth by default), node
deregistration, the lock-delay cap, tombstone reaping, and the fault answers a real cluster gives."""

from __future__ import annotations

import json
import time
from typing import Any

import consul
import pytest
from consul.base import CB

from dbfence.lab.consul_standin import ConsulStandin, StandinConfig
from dbfence.lab.consul_standin.model import SessionRequest
from dbfence.lab.consul_standin.state import StandinState
from tests.consul.standin_helpers import client_for, create_session, kv_session, wait_until


def session_checks(client: Any, **body: Any) -> list[str]:
    _, info = client.session.info(create_session(client, **body))
    return list(info["NodeChecks"] or [])


def test_session_checks_default_to_serf_health_exactly_as_consul_1_7_decodes_them(
    standin: ConsulStandin,
) -> None:
    client = client_for(standin)
    client.agent.check.register("app", check=consul.Check.ttl("30s"), check_id="app")
    client.agent.check.ttl_pass("app")
    assert session_checks(client) == ["serfHealth"]  # no field at all
    assert session_checks(client, Name="x") == ["serfHealth"]
    assert session_checks(client, Checks=[]) == []
    assert session_checks(client, NodeChecks=[]) == []
    assert session_checks(client, Checks=[], NodeChecks=[], ServiceChecks=[]) == []
    assert session_checks(client, Checks=["serfHealth"]) == ["serfHealth"]
    assert session_checks(client, NodeChecks=["app"]) == ["app"]
    # A non-default Checks list is kept next to the default NodeChecks: serfHealth stays bound.
    assert session_checks(client, Checks=["app"]) == ["app", "serfHealth"]
    # ...and a Checks list next to an empty NodeChecks is dropped: Consul binds nothing at all.
    assert session_checks(client, Checks=["app"], NodeChecks=[]) == []
    # python-consul2's checks=[] sends a lowercase key; Go decodes JSON names case-insensitively.
    session_id = client.session.create(checks=[])
    assert client.session.info(session_id)[1]["NodeChecks"] is None


def _raw_put(client: Any, path: str, body: Any) -> Any:
    return client.http.put(CB.json(), path=path, data=json.dumps(body))


def test_a_failed_serf_health_ends_the_sessions_bound_to_it_and_only_those(standin: ConsulStandin) -> None:
    client = client_for(standin)
    bound = create_session(client, Behavior="delete", LockDelay="30s")
    unbound = create_session(client, Behavior="delete", Checks=[], LockDelay="30s")
    released = create_session(client, LockDelay="30s")  # Behavior release, bound to serfHealth
    assert client.kv.put("a/leader", "db1", acquire=bound)
    assert client.kv.put("a/member", "db2", acquire=unbound)
    assert client.kv.put("b/leader", "db3", acquire=released)
    client.agent.service.register("db", service_id="db-1", port=3307, check=consul.Check.ttl("30s"))
    client.agent.check.ttl_pass("service:db-1")
    assert len(client.health.service("db", passing=True)[1]) == 1

    # A gossip failure, `consul leave` or a restarted agent: the leader marks serfHealth critical.
    assert client.agent.check.ttl_fail("serfHealth", notes="agent left") is True
    assert client.session.info(bound)[1] is None and client.session.info(released)[1] is None
    assert client.session.info(unbound)[1] is not None
    assert client.kv.get("a/leader")[1] is None  # delete
    _, kept = client.kv.get("b/leader")
    assert kept["Value"] == b"db3" and "Session" not in kept  # release
    assert kv_session(client, "a/member") == unbound
    # The node's services are critical everywhere, and the lock-delay holds the keys.
    assert client.health.service("db", passing=True)[1] == []
    rival = create_session(client, Checks=[], LockDelay="0s")
    assert client.kv.put("a/leader", "rival", acquire=rival) is False
    assert client.kv.put("b/leader", "rival", acquire=rival) is False
    with pytest.raises(consul.ConsulException, match="critical"):
        create_session(client)  # a new default session cannot bind a critical check
    client.agent.check.ttl_pass("serfHealth")
    assert len(client.health.service("db", passing=True)[1]) == 1
    assert create_session(client)


def test_catalog_nodes_their_serf_health_and_deregistration(standin: ConsulStandin) -> None:
    client = client_for(standin)
    assert _raw_put(client, "/v1/catalog/register", {
        "Node": "db9", "Address": "127.0.0.9",
        "Check": {"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing"},
    }) is True
    assert [n["Node"] for n in client.catalog.nodes()[1]] == ["db9", "standin"]
    on_db9 = create_session(client, Node="db9", Behavior="delete", LockDelay="0s")
    checkless = create_session(client, Node="db9", Checks=[], Behavior="delete", LockDelay="20s")
    assert client.kv.put("x/leader", "db9", acquire=checkless)
    assert _raw_put(client, "/v1/catalog/register", {
        "Node": "db9", "Address": "127.0.0.9", "Check": {"CheckID": "serfHealth", "Status": "critical"},
    }) is True
    assert client.session.info(on_db9)[1] is None
    assert client.session.info(checkless)[1] is not None
    # Deregistering the node ends every session on it, checks or not, with the lock-delay.
    assert _raw_put(client, "/v1/catalog/deregister", {"Node": "db9"}) is True
    assert client.session.info(checkless)[1] is None
    assert client.kv.get("x/leader")[1] is None
    assert client.kv.put("x/leader", "rival", acquire=create_session(client, Checks=[])) is False
    assert [n["Node"] for n in client.catalog.nodes()[1]] == ["standin"]
    with pytest.raises(consul.ConsulException, match="Missing node registration"):
        create_session(client, Node="db9")
    # The stand-in's own node: its sessions end, its agent registers it back at once.
    own = create_session(client, Checks=[])
    assert _raw_put(client, "/v1/catalog/deregister", {"Node": "standin"}) is True
    assert client.session.info(own)[1] is None
    assert create_session(client, Checks=[])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lock_delay_is_capped_at_60_seconds() -> None:
    clock = FakeClock()
    state = StandinState(StandinConfig(), clock=clock)
    holder = state.session_create(SessionRequest(lock_delay=120.0, node_checks=()))
    rival = state.session_create(SessionRequest(lock_delay=0.0, node_checks=()))
    assert state.kv_put("k", b"v", 0, acquire=holder)
    state.session_destroy(holder)
    clock.now += 59.9
    assert state.kv_put("k", b"v", 0, acquire=rival) is False
    clock.now += 0.2
    assert state.kv_put("k", b"v", 0, acquire=rival) is True


def test_tombstones_are_reaped_after_their_ttl_and_the_prefix_index_goes_back() -> None:
    clock = FakeClock()
    state = StandinState(StandinConfig(tombstone_ttl=900.0), clock=clock)
    state.kv_put("p/kept", b"1", 0)
    kept_index = state.kv_get("p/kept")[0]
    state.kv_put("p/gone", b"2", 0)
    state.kv_delete("p/gone")
    with_tombstone = state.kv_list("p/")[0]
    assert with_tombstone > kept_index
    clock.now += 899
    state.reap()
    assert state.kv_list("p/")[0] == with_tombstone
    clock.now += 2
    state.reap()
    assert state.kv_list("p/")[0] == kept_index


def test_no_leader_and_rate_limit_answers_on_demand(standin: ConsulStandin) -> None:
    client = client_for(standin)
    assert _raw_put(client, "/v1/standin/control", {"NoLeader": True})["NoLeader"] is True
    with pytest.raises(consul.ConsulException, match="500 No cluster leader"):
        client.kv.get("k")
    assert client.status.leader() == ""
    _raw_put(client, "/v1/standin/control", {"NoLeader": False, "RateLimited": True})
    with pytest.raises(consul.ConsulException, match="429"):
        client.kv.put("k", "v")
    _raw_put(client, "/v1/standin/control", {"RateLimited": False})
    assert client.kv.put("k", "v") is True
    assert client.status.leader()


def test_tag_filters_are_case_insensitive(standin: ConsulStandin) -> None:
    client = client_for(standin)
    client.agent.service.register("db", service_id="db-1", port=3307, tags=["Primary"],
                                  check=consul.Check.ttl("30s"))
    client.agent.check.ttl_pass("service:db-1")
    for tag in ("primary", "PRIMARY", "Primary"):
        assert [row["Service"]["ID"] for row in client.health.service("db", tag=tag)[1]] == ["db-1"]
        assert [row["ServiceID"] for row in client.catalog.service("db", tag=tag)[1]] == ["db-1"]
    assert client.health.service("db", tag="replica")[1] == []


def test_a_check_change_reaches_the_catalog_and_the_sessions_only_when_synced(
    standin_factory: Any,
) -> None:
    standin = standin_factory(catalog_sync_delay=0.5)
    client = client_for(standin)
    client.agent.service.register("db", service_id="db-1", port=3307, check=consul.Check.ttl("30s"))
    client.agent.check.ttl_pass("service:db-1")
    wait_until(lambda: client.health.service("db", passing=True)[1], timeout=5, what="db-1 passing")
    session_id = create_session(client, Checks=[], ServiceChecks=[{"ID": "service:db-1"}], LockDelay="0s")
    assert client.kv.put("leader", "db1", acquire=session_id)
    index, _ = client.health.service("db")
    client.agent.check.ttl_fail("service:db-1")
    failed_at = time.monotonic()
    # The agent knows at once; the servers still answer the old status and keep the session.
    assert client.agent.checks()["service:db-1"]["Status"] == "critical"
    assert client.health.service("db", passing=True)[1] != []
    assert client.session.info(session_id)[1] is not None
    woke_index, _ = client.health.service("db", index=index, wait="5s")
    synced_after = time.monotonic() - failed_at
    assert int(woke_index) > int(index) and 0.4 <= synced_after < 2.0, synced_after
    assert client.health.service("db", passing=True)[1] == []
    assert client.session.info(session_id)[1] is None and client.kv.get("leader")[1] is not None


def test_catalog_register_wants_a_node_and_an_address_like_consul(standin: ConsulStandin) -> None:
    client = client_for(standin)
    with pytest.raises(consul.ConsulException, match="Must provide node"):
        _raw_put(client, "/v1/catalog/register", {"Address": "127.0.0.9"})
    with pytest.raises(consul.ConsulException, match="SkipNodeUpdate"):
        _raw_put(client, "/v1/catalog/register", {"Node": "standin"})
    # Checks decode as the agent's do (a 400 that says why, not the stand-in's internal 500).
    with pytest.raises(consul.base.BadRequest, match="Checks must be a list"):
        _raw_put(client, "/v1/catalog/register", {"Node": "standin", "SkipNodeUpdate": True, "Checks": 5})
    with pytest.raises(consul.base.BadRequest, match="a check must be a JSON object"):
        _raw_put(client, "/v1/catalog/register", {"Node": "standin", "SkipNodeUpdate": True, "Checks": ["x"]})
    assert _raw_put(client, "/v1/catalog/register", {
        "Node": "standin", "SkipNodeUpdate": True, "Check": {"CheckID": "serfHealth", "Status": "passing"},
    }) is True

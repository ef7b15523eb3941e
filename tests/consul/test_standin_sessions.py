"""Sessions on the Consul stand-in through python-consul2: TTLs, renew, destroy, behaviors, checks."""

from __future__ import annotations

import time
from collections.abc import Callable

import consul
import pytest

from dbfence.lab.consul_standin import ConsulStandin
from tests.consul.standin_helpers import client_for, create_session, kv_session, wait_until


def test_session_lifecycle_with_the_real_client(standin: ConsulStandin) -> None:
    client = client_for(standin)
    session_id = client.session.create(name="agent-db1", lock_delay=0, behavior="delete", ttl=10)
    index, info = client.session.info(session_id)
    assert int(index) > 0
    assert info["ID"] == session_id
    assert info["Name"] == "agent-db1"
    assert info["Behavior"] == "delete"
    assert info["TTL"] == "10s"
    assert info["LockDelay"] == 0
    assert info["NodeChecks"] == ["serfHealth"]
    assert info["Node"] == "standin"
    renewed = client.session.renew(session_id)
    assert renewed["ID"] == session_id
    _, listed = client.session.list()
    assert [s["ID"] for s in listed] == [session_id]
    assert client.session.destroy(session_id) is True
    assert client.session.info(session_id)[1] is None
    with pytest.raises(consul.NotFound):
        client.session.renew(session_id)
    # Destroying an unknown session is idempotent, as in Consul.
    assert client.session.destroy(session_id) is True


def test_default_lock_delay_is_15s_in_nanoseconds(standin: ConsulStandin) -> None:
    client = client_for(standin)
    _, info = client.session.info(client.session.create())
    assert info["LockDelay"] == 15_000_000_000
    assert info["Behavior"] == "release"
    assert info["TTL"] == ""


def test_ttl_outside_the_allowed_range_is_refused(standin_factory: Callable[..., ConsulStandin]) -> None:
    client = client_for(standin_factory(session_ttl_min=0.2))
    for ttl in ("100ms", "86401s"):
        with pytest.raises(consul.ConsulException, match="Invalid Session TTL"):
            create_session(client, TTL=ttl)
    with pytest.raises(consul.ConsulException, match="invalid"):
        create_session(client, TTL="ten seconds")
    assert create_session(client, TTL="200ms")


def _invalidation_delay(client: object, ttl: float) -> tuple[float, float]:
    """Create a TTL session holding a key, renew it once, return (time from renew send, from renew return)."""
    session_id = create_session(client, TTL=f"{int(ttl * 1000)}ms", LockDelay="0s")
    assert client.kv.put("lease/holder", "me", acquire=session_id)  # type: ignore[attr-defined]
    sent = time.monotonic()
    client.session.renew(session_id)  # type: ignore[attr-defined]
    returned = time.monotonic()
    index, entry = client.kv.get("lease/holder")  # type: ignore[attr-defined]
    while entry.get("Session") == session_id:
        index, entry = client.kv.get("lease/holder", index=index, wait="5s")  # type: ignore[attr-defined]
    invalidated = time.monotonic()
    return invalidated - sent, invalidated - returned


def test_ttl_session_is_invalidated_after_twice_its_ttl_like_consul(
    standin_factory: Callable[..., ConsulStandin],
) -> None:
    """Consul reaps a TTL session only after 2 x TTL: a holder must never count on more than 1 x TTL."""
    client = client_for(standin_factory())
    ttl = 0.4
    from_send, from_return = _invalidation_delay(client, ttl)
    assert from_send >= 2 * ttl
    assert from_return < 2 * ttl + 0.25


def test_ttl_multiplier_is_configurable(standin_factory: Callable[..., ConsulStandin]) -> None:
    client = client_for(standin_factory(session_ttl_multiplier=1.0))
    ttl = 0.4
    from_send, from_return = _invalidation_delay(client, ttl)
    assert from_send >= ttl
    assert from_return < ttl + 0.25


def test_renewing_keeps_a_ttl_session_alive(standin: ConsulStandin) -> None:
    client = client_for(standin)
    session_id = create_session(client, TTL="300ms", LockDelay="0s")
    assert client.kv.put("lease/renewed", "me", acquire=session_id)
    deadline = time.monotonic() + 1.5  # well past 2 x TTL
    while time.monotonic() < deadline:
        assert client.session.renew(session_id)["ID"] == session_id
        time.sleep(0.1)  # the renew cadence under test, not synchronisation
    assert kv_session(client, "lease/renewed") == session_id
    wait_until(
        lambda: client.session.info(session_id)[1] is None, timeout=2, what="expiry once renewals stop"
    )
    assert kv_session(client, "lease/renewed") is None


def test_behavior_delete_removes_held_keys_on_invalidation(standin: ConsulStandin) -> None:
    client = client_for(standin)
    session_id = create_session(client, Behavior="delete", TTL="200ms", LockDelay="0s")
    assert client.kv.put("members/db1", "healthy", acquire=session_id)
    assert client.kv.put("members/db1-extra", "x", acquire=session_id)
    client.kv.put("members/db2", "not held")
    wait_until(lambda: client.kv.get("members/db1")[1] is None, timeout=2, what="ephemeral key deletion")
    _, keys = client.kv.get("members/", keys=True)
    assert keys == ["members/db2"]


def test_behavior_release_keeps_keys_but_clears_the_session(standin: ConsulStandin) -> None:
    client = client_for(standin)
    session_id = create_session(client, LockDelay="0s")
    assert client.kv.put("leader", "db1", acquire=session_id)
    client.session.destroy(session_id)
    _, entry = client.kv.get("leader")
    assert entry["Value"] == b"db1"
    assert "Session" not in entry
    assert entry["LockIndex"] == 1


def test_session_is_invalidated_when_its_check_goes_critical(standin: ConsulStandin) -> None:
    client = client_for(standin)
    client.agent.service.register("db", service_id="db-1", port=3307, check=consul.Check.ttl("30s"))
    with pytest.raises(consul.ConsulException, match="critical"):
        create_session(client, Checks=["serfHealth", "service:db-1"])  # TTL checks start critical
    client.agent.check.ttl_pass("service:db-1")
    session_id = create_session(client, Checks=["serfHealth", "service:db-1"], LockDelay="0s")
    assert client.kv.put("leader", "db1", acquire=session_id)
    client.agent.check.ttl_fail("service:db-1", notes="fenced")
    assert client.session.info(session_id)[1] is None
    assert kv_session(client, "leader") is None


def test_session_refers_only_to_existing_checks_and_the_local_node(standin: ConsulStandin) -> None:
    client = client_for(standin)
    with pytest.raises(consul.ConsulException, match="Missing check"):
        create_session(client, Checks=["no-such-check"])
    with pytest.raises(consul.ConsulException, match="node"):
        create_session(client, Node="elsewhere")
    with pytest.raises(consul.ConsulException, match="Behavior"):
        create_session(client, Behavior="explode")
    _, info = client.session.info(create_session(client, Checks=[]))
    assert info["NodeChecks"] is None

"""KV and lock semantics of the Consul stand-in through python-consul2."""

from __future__ import annotations

import time

import consul
import pytest
import requests

from dbfence.lab.consul_standin import ConsulStandin
from tests.consul.standin_helpers import client_for, create_session, wait_until


def test_put_get_raw_recurse_keys_and_delete(standin: ConsulStandin) -> None:
    client = client_for(standin)
    index, missing = client.kv.get("cluster/leader")
    assert missing is None
    assert int(index) >= 1  # a 404 still carries X-Consul-Index
    assert client.kv.put("cluster/leader", "db1", flags=42) is True
    assert client.kv.put("cluster/members/db1", "a") is True
    assert client.kv.put("cluster/members/db2", "b") is True
    index, entry = client.kv.get("cluster/leader")
    assert entry["Value"] == b"db1"
    assert entry["Flags"] == 42
    assert entry["LockIndex"] == 0
    assert entry["CreateIndex"] == entry["ModifyIndex"] == int(index)
    raw = requests.get(f"{standin.http_url}/v1/kv/cluster/leader?raw", timeout=5)
    assert raw.content == b"db1"
    assert raw.headers["X-Consul-Index"] == index
    _, entries = client.kv.get("cluster/members/", recurse=True)
    assert [e["Key"] for e in entries] == ["cluster/members/db1", "cluster/members/db2"]
    _, keys = client.kv.get("cluster/", keys=True, separator="/")
    assert keys == ["cluster/leader", "cluster/members/"]
    assert client.kv.delete("cluster/members/", recurse=True) is True
    assert client.kv.get("cluster/members/", recurse=True)[1] is None
    assert client.kv.delete("cluster/leader") is True
    assert client.kv.get("cluster/leader")[1] is None


def test_empty_body_stores_a_null_value(standin: ConsulStandin) -> None:
    client = client_for(standin)
    assert client.kv.put("folder/", None)
    assert client.kv.get("folder/")[1]["Value"] is None


def test_unchanged_write_keeps_modify_index(standin: ConsulStandin) -> None:
    client = client_for(standin)
    client.kv.put("k", "v")
    first = client.kv.get("k")[1]["ModifyIndex"]
    client.kv.put("k", "v")
    assert client.kv.get("k")[1]["ModifyIndex"] == first
    client.kv.put("k", "w")
    assert client.kv.get("k")[1]["ModifyIndex"] > first


def test_check_and_set(standin: ConsulStandin) -> None:
    client = client_for(standin)
    assert client.kv.put("cas", "first", cas=0) is True
    assert client.kv.put("cas", "again", cas=0) is False  # cas=0: only if absent
    modify_index = client.kv.get("cas")[1]["ModifyIndex"]
    assert client.kv.put("cas", "stale", cas=modify_index + 1000) is False
    assert client.kv.put("cas", "second", cas=modify_index) is True
    assert client.kv.get("cas")[1]["Value"] == b"second"
    current = client.kv.get("cas")[1]["ModifyIndex"]
    assert client.kv.delete("cas", cas=modify_index) is False
    assert client.kv.get("cas")[1] is not None
    assert client.kv.delete("cas", cas=current) is True
    assert client.kv.get("cas")[1] is None


def test_conflicting_flags_and_bad_keys_are_400(standin: ConsulStandin) -> None:
    client = client_for(standin)
    session_id = create_session(client)
    with pytest.raises(consul.base.BadRequest, match="Conflicting flags"):
        client.kv.put("k", "v", cas=0, acquire=session_id)
    with pytest.raises(consul.base.BadRequest, match="Conflicting flags"):
        client.kv.delete("k", recurse=True, cas=3)
    with pytest.raises(consul.base.BadRequest, match="invalid character"):
        client.kv.put("bad:key", "v")


def test_acquire_release_and_lock_index(standin: ConsulStandin) -> None:
    client = client_for(standin)
    first = create_session(client, Name="db1", LockDelay="0s")
    second = create_session(client, Name="db2", LockDelay="0s")
    assert client.kv.put("leader", "db1", acquire=first) is True
    entry = client.kv.get("leader")[1]
    assert (entry["Session"], entry["LockIndex"]) == (first, 1)
    assert client.kv.put("leader", "db2", acquire=second) is False
    # Re-acquiring by the holder updates the value and keeps LockIndex.
    assert client.kv.put("leader", "db1-again", acquire=first) is True
    entry = client.kv.get("leader")[1]
    assert (entry["Value"], entry["LockIndex"]) == (b"db1-again", 1)
    assert client.kv.put("leader", "", release=second) is False  # only the holder may release
    assert client.kv.put("leader", "released", release=first) is True
    entry = client.kv.get("leader")[1]
    assert "Session" not in entry
    assert (entry["Value"], entry["LockIndex"]) == (b"released", 1)
    assert client.kv.put("leader", "db2", acquire=second) is True
    assert client.kv.get("leader")[1]["LockIndex"] == 2  # the fencing token moved forward


def test_plain_put_on_a_held_key_keeps_the_session_but_not_the_lock_index(standin: ConsulStandin) -> None:
    """Consul's state store writes the request's LockIndex (0) on a plain PUT.

    So a holder must update its key with ?acquire=<own session>, which keeps the LockIndex (fencing token).
    """
    client = client_for(standin)
    session_id = create_session(client)
    assert client.kv.put("leader", "v1", acquire=session_id)
    assert client.kv.put("leader", "v2") is True
    entry = client.kv.get("leader")[1]
    assert (entry["Session"], entry["Value"], entry["LockIndex"]) == (session_id, b"v2", 0)


def test_acquire_with_an_unknown_session_is_a_server_error(standin: ConsulStandin) -> None:
    client = client_for(standin)
    with pytest.raises(consul.ConsulException, match="invalid session"):
        client.kv.put("leader", "x", acquire="4b3c2b7e-0000-4000-8000-000000000000")


def test_lock_delay_after_invalidation_but_not_after_release(standin: ConsulStandin) -> None:
    client = client_for(standin)
    lock_delay = 0.5
    holder = create_session(client, LockDelay=f"{int(lock_delay * 1000)}ms")
    waiter = create_session(client, LockDelay="0s")
    # An explicit release applies no lock-delay.
    assert client.kv.put("leader", "holder", acquire=holder)
    assert client.kv.put("leader", "", release=holder)
    assert client.kv.put("leader", "waiter", acquire=waiter) is True
    assert client.kv.put("leader", "", release=waiter)
    # Invalidation (destroy here; TTL expiry alike) blocks every acquire for LockDelay.
    assert client.kv.put("leader", "holder", acquire=holder)
    destroyed = time.monotonic()
    client.session.destroy(holder)
    assert client.kv.put("leader", "waiter", acquire=waiter) is False
    wait_until(
        lambda: client.kv.put("leader", "waiter", acquire=waiter),
        timeout=lock_delay + 1,
        what="lock-delay end",
    )
    assert time.monotonic() - destroyed >= lock_delay
    assert client.kv.get("leader")[1]["LockIndex"] == 4


def test_zero_lock_delay_allows_immediate_takeover(standin: ConsulStandin) -> None:
    client = client_for(standin)
    holder = create_session(client, LockDelay="0s")
    waiter = create_session(client, LockDelay="0s")
    assert client.kv.put("leader", "holder", acquire=holder)
    client.session.destroy(holder)
    assert client.kv.put("leader", "waiter", acquire=waiter) is True


def test_numeric_lock_delay_below_1000_means_seconds(standin: ConsulStandin) -> None:
    client = client_for(standin)
    _, info = client.session.info(create_session(client, LockDelay=2))
    assert info["LockDelay"] == 2_000_000_000
    _, info = client.session.info(create_session(client, LockDelay=250_000_000))
    assert info["LockDelay"] == 250_000_000

"""Blocking queries (?index=&wait=) on the Consul stand-in: prompt wake-ups, timeouts, scoping."""

from __future__ import annotations

import threading
import time
from typing import Any

import consul
import pytest
from consul.base import CB

from dbfence.lab.consul_standin import ConsulStandin
from tests.consul.standin_helpers import client_for, create_session, wait_until


class Watcher:
    """Runs one blocking call in a thread and records when it returned."""

    def __init__(self, standin: ConsulStandin, call: Any) -> None:
        assert standin.state is not None
        self._state = standin.state
        parked_before = self._state.blocked_queries
        self.result: Any = None
        self.returned_at: float | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()
        wait_until(lambda: self._state.blocked_queries > parked_before, timeout=5, what="the query to park")

    def _run(self, call: Any) -> None:
        self.result = call()
        self.returned_at = time.monotonic()

    def join(self, timeout: float) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "blocking query did not return"
        return self.result


def test_release_wakes_a_blocked_watcher_within_100ms(standin: ConsulStandin) -> None:
    client = client_for(standin)
    watcher_client = client_for(standin)
    session_id = create_session(client, LockDelay="0s")
    assert client.kv.put("cluster/leader", "db1", acquire=session_id)
    index, _ = client.kv.get("cluster/leader")
    watcher = Watcher(standin, lambda: watcher_client.kv.get("cluster/leader", index=index, wait="10s"))
    assert client.kv.put("cluster/leader", "", release=session_id)
    released_at = time.monotonic()
    new_index, entry = watcher.join(timeout=5)
    assert watcher.returned_at is not None
    latency = watcher.returned_at - released_at
    assert latency < 0.1, f"watcher noticed the release after {latency * 1000:.1f} ms"
    assert int(new_index) > int(index)
    assert "Session" not in entry


def test_the_control_answer_counts_the_parked_queries(standin: ConsulStandin) -> None:
    """What a test over HTTP (the stand-in in another process) polls to know a watcher is in place."""
    client = client_for(standin)
    client.kv.put("counted", "x")
    index, _ = client.kv.get("counted")

    def parked() -> int:
        answer = client.http.put(CB.json(), path="/v1/standin/control", data="{}")
        return int(answer["BlockedQueries"])

    before = parked()
    watcher = Watcher(standin, lambda: client_for(standin).kv.get("counted", index=index, wait="10s"))
    assert parked() == before + 1
    client.kv.put("counted", "y")
    watcher.join(timeout=5)
    assert parked() == before


def test_wait_timeout_returns_the_same_index(standin: ConsulStandin) -> None:
    client = client_for(standin)
    client.kv.put("quiet", "x")
    index, _ = client.kv.get("quiet")
    started = time.monotonic()
    same_index, entry = client.kv.get("quiet", index=index, wait="300ms")
    elapsed = time.monotonic() - started
    assert same_index == index
    assert entry["Value"] == b"x"
    assert 0.3 <= elapsed < 0.3 * 17 / 16 + 0.2  # Consul adds up to wait/16 of jitter


def test_a_single_key_watch_ignores_other_keys(standin: ConsulStandin) -> None:
    client = client_for(standin)
    client.kv.put("watched", "x")
    index, _ = client.kv.get("watched")
    started = time.monotonic()
    watcher = Watcher(standin, lambda: client_for(standin).kv.get("watched", index=index, wait="700ms"))
    client.kv.put("unrelated", "y")
    returned_index, _ = watcher.join(timeout=5)
    assert returned_index == index
    assert watcher.returned_at is not None and watcher.returned_at - started >= 0.7


def test_a_prefix_watch_wakes_on_delete_inside_the_prefix(standin: ConsulStandin) -> None:
    client = client_for(standin)
    client.kv.put("members/db1", "a")
    client.kv.put("members/db2", "b")
    index, _ = client.kv.get("members/", recurse=True)
    watcher = Watcher(
        standin, lambda: client_for(standin).kv.get("members/", recurse=True, index=index, wait="10s")
    )
    client.kv.delete("members/db2")
    new_index, entries = watcher.join(timeout=5)
    assert int(new_index) > int(index)  # the tombstone keeps the prefix index moving forward
    assert [e["Key"] for e in entries] == ["members/db1"]


def test_health_watch_wakes_when_a_check_fails(standin: ConsulStandin) -> None:
    client = client_for(standin)
    client.agent.service.register(
        "lab", service_id="db1", port=3307, tags=["primary"], check=consul.Check.ttl("30s")
    )
    client.agent.check.ttl_pass("service:db1")
    index, rows = client.health.service("lab", passing=True)
    assert [r["Service"]["ID"] for r in rows] == ["db1"]
    watcher = Watcher(
        standin, lambda: client_for(standin).health.service("lab", passing=True, index=index, wait="10s")
    )
    client.agent.check.ttl_fail("service:db1", notes="fencing")
    new_index, rows = watcher.join(timeout=5)
    assert int(new_index) > int(index)
    assert rows == []


def test_session_info_watch_wakes_on_destroy(standin: ConsulStandin) -> None:
    client = client_for(standin)
    session_id = create_session(client)
    index, _ = client.session.info(session_id)
    watcher = Watcher(standin, lambda: client_for(standin).session.info(session_id, index=index, wait="10s"))
    client.session.destroy(session_id)
    _, info = watcher.join(timeout=5)
    assert info is None


def test_bad_index_or_wait_is_400(standin: ConsulStandin) -> None:
    client = client_for(standin)
    client.kv.put("k", "v")
    with pytest.raises(consul.base.BadRequest, match="Invalid wait time"):
        client.kv.get("k", index=1, wait="soon")
    with pytest.raises(consul.base.BadRequest, match="Invalid index"):
        client.kv.get("k", index="abc")


def test_stop_releases_parked_watchers(standin_factory: Any) -> None:
    standin = standin_factory()
    client = client_for(standin)
    client.kv.put("k", "v")
    index, _ = client.kv.get("k")
    watcher = Watcher(standin, lambda: client_for(standin).kv.get("k", index=index, wait="60s"))
    stopping = time.monotonic()
    standin.stop()
    assert watcher.join(timeout=5)[0] == index
    assert time.monotonic() - stopping < 2

"""The Consul lock contract, run unchanged against the stand-in and a real ``consul agent -dev``.

The first guarantee on Consul: a rival's acquire never succeeds before the holder's gate deadline,
whatever ends the holder's session early (an operator's destroy, a flap of the node's serfHealth,
the node's deregistration). Then the index and error contract the agent's loop relies on.
Tests that need a fault only the stand-in can inject say so and are skipped on a real Consul.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from dbfence.locks import DcsUnreachable, LeaseGrant, LeaseLock, LockConflict, SessionExpired
from dbfence.locks.consul import ConsulLeaseLock
from tests.locks.conftest import Dcs
from tests.locks.consul_http import (
    consul_request,
    deregister_agent_node,
    destroy_session,
    session_info,
    set_serf_health,
    standin_control,
)
from tests.locks.locks_support import holder, record_figure
from tests.locks.test_locks_contract import member as _member


def _address(dcs: Dcs) -> str:
    return dcs.config.endpoints[0]


def _held_and_just_renewed(dcs: Dcs) -> tuple[LeaseLock, LeaseGrant]:
    lock = dcs.lock("db1")
    lock.try_acquire(holder("db1"))
    grant = lock.renew()
    assert grant.token is not None
    return lock, grant


def _rival_acquires(dcs: Dcs, until: float) -> float | None:
    """A rival on the same Consul trying every 50 ms until ``until``: when its first acquire returned."""
    rival = dcs.lock("db2")
    while time.monotonic() < until:
        try:
            rival.try_acquire(holder("db2"))
            return time.monotonic()
        except LockConflict:
            pass  # held, or refused during the lock-delay
        except SessionExpired:
            pass  # its own session went with the node: the next try opens a new one
        time.sleep(0.05)
    return None


def _assert_no_rival_before_deadline(dcs: Dcs, grant: LeaseGrant, what: str) -> float | None:
    acquired_at = _rival_acquires(dcs, until=grant.deadline + 0.5)
    if acquired_at is not None:
        early = grant.deadline - acquired_at
        assert early <= 0, f"after {what}, a rival acquired {early:.2f}s before the holder's gate deadline"
    return acquired_at


@pytest.mark.timeout(120)
def test_a_destroyed_session_keeps_rivals_out_until_the_holders_deadline(consul_dcs: Dcs) -> None:
    lock, grant = _held_and_just_renewed(consul_dcs)
    destroyed_at = time.monotonic()
    destroy_session(_address(consul_dcs), grant.session_id)
    acquired_at = _assert_no_rival_before_deadline(consul_dcs, grant, "a destroy right after renewal")
    if acquired_at is None:  # polling stopped half a second after the deadline: the lock-delay still runs
        acquired_at = _rival_acquires(consul_dcs, until=time.monotonic() + consul_dcs.takeover_delay() + 5)
    assert acquired_at is not None, "the rival never acquired the lock"
    record_figure(f"{consul_dcs.name} destroy -> rival acquires", acquired_at - destroyed_at)
    with pytest.raises(SessionExpired):
        lock.renew()


@pytest.mark.timeout(120)
def test_a_serf_health_flap_does_not_end_the_holders_session(consul_dcs: Dcs) -> None:
    """A gossip hiccup marks the node's serfHealth critical for a moment: our session is not bound to it."""
    address = _address(consul_dcs)
    lock, grant = _held_and_just_renewed(consul_dcs)
    try:
        set_serf_health(address, "critical")
    finally:
        set_serf_health(address, "passing")
    _assert_no_rival_before_deadline(consul_dcs, grant, "a serfHealth flap")
    # Only the TTL ends the session: it is still there, and still holds the lock.
    assert session_info(address, grant.session_id) is not None
    assert lock.renew().token == grant.token


@pytest.mark.timeout(120)
def test_the_nodes_deregistration_keeps_rivals_out_until_the_holders_deadline(consul_dcs: Dcs) -> None:
    """`consul leave` (or a client agent restarted with leave_on_terminate) deregisters the node, which
    ends every session on it at once, checks or not: the lock-delay must cover the holder's deadline."""
    lock, grant = _held_and_just_renewed(consul_dcs)
    deregister_agent_node(_address(consul_dcs))
    acquired_at = _assert_no_rival_before_deadline(consul_dcs, grant, "the node's deregistration")
    if acquired_at is None:
        acquired_at = _rival_acquires(consul_dcs, until=time.monotonic() + consul_dcs.takeover_delay() + 5)
    assert acquired_at is not None, "the rival never acquired the lock"
    with pytest.raises(SessionExpired):
        lock.renew()


def test_a_clean_release_is_not_delayed(consul_dcs: Dcs) -> None:
    """Consul applies lock-delay only to invalidated sessions' keys, never after ?release."""
    lock, _ = _held_and_just_renewed(consul_dcs)
    lock.release()
    started = time.monotonic()
    acquired_at = _rival_acquires(consul_dcs, until=started + 5)
    assert acquired_at is not None and acquired_at - started < min(1.0, consul_dcs.takeover_delay())


# ---------------------------------------------------------------------------- the index contract


class Watcher(threading.Thread):
    def __init__(self, lock: LeaseLock, index: int, timeout: float) -> None:
        super().__init__(daemon=True)
        self.lock, self.index, self.timeout = lock, index, timeout
        self.result: int | None = None
        self.elapsed = 0.0
        self.failure: BaseException | None = None

    def run(self) -> None:
        started = time.monotonic()
        try:
            self.result = self.lock.wait_for_change(self.index, self.timeout)
        except BaseException as exc:  # surfaced by the test
            self.failure = exc
        self.elapsed = time.monotonic() - started


def _watched(observer: LeaseLock, change: Callable[[], object], what: str) -> int:
    """Run ``change`` while a watcher blocks on the cluster prefix; the index it woke with."""
    before = observer.snapshot().index
    watcher = Watcher(observer, before, timeout=20.0)
    watcher.start()
    change()
    watcher.join(25)
    assert watcher.failure is None, watcher.failure
    assert watcher.result is not None, what
    assert watcher.result > before, f"{what}: index {before} -> {watcher.result}"
    assert watcher.elapsed < 5.0, f"{what}: the watcher slept {watcher.elapsed:.1f}s through the change"
    assert observer.snapshot().index >= watcher.result
    return watcher.result


def test_the_index_moves_and_wakes_a_watcher_on_acquire_release_and_invalidation(consul_dcs: Dcs) -> None:
    observer = consul_dcs.lock("observer")
    owner = consul_dcs.lock("db1")
    owner.publish_member(_member("db1"))
    indexes = [
        _watched(observer, lambda: owner.try_acquire(holder("db1")), "acquire"),
        _watched(observer, owner.release, "release"),
        _watched(observer, lambda: owner.try_acquire(holder("db1")), "acquire again"),
    ]
    session, member_session = owner.session_id, _consul(owner).member_session_id
    assert session is not None and member_session is not None
    indexes.append(_watched(observer, lambda: destroy_session(_address(consul_dcs), session),
                            "delete on invalidation"))
    snapshot = observer.snapshot()
    assert snapshot.lock is None and snapshot.member("db1") is not None  # Behavior=delete: the lock
    indexes.append(_watched(observer, lambda: destroy_session(_address(consul_dcs), member_session),
                            "the member record's delete on invalidation"))
    assert observer.snapshot().member("db1") is None
    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes), indexes


def test_a_watcher_copes_with_an_index_ahead_of_the_server(consul_dcs: Dcs) -> None:
    """An index from before a state reset is higher than the server's: the watch reports a change
    (so the caller takes a fresh snapshot) after at most its timeout, instead of hanging."""
    observer = consul_dcs.lock("observer")
    observer.publish_member(_member("observer"))
    index = observer.snapshot().index
    started = time.monotonic()
    result = observer.wait_for_change(index + 1000, 0.5)
    assert result != index + 1000
    assert time.monotonic() - started < 0.5 + 0.5 / 16 + consul_dcs.settings.call_timeout


def _standin_only(dcs: Dcs) -> None:
    if dcs.name != "consul-standin":
        pytest.skip("needs a fault only the stand-in can inject on demand")


def test_reaped_tombstones_move_a_prefix_index_backwards_and_watchers_cope(consul_dcs: Dcs) -> None:
    _standin_only(consul_dcs)
    owner = consul_dcs.lock("db1")
    owner.publish_member(_member("db1"))
    owner.try_acquire(holder("db1"))
    operator = consul_dcs.lock("cli")
    operator.force_delete_lock()  # leaves a tombstone: the prefix's index is the delete's
    with_tombstone = operator.snapshot().index
    reaped = standin_control(_address(consul_dcs), ReapTombstones=True)["ReapedTombstones"]
    assert reaped >= 1
    after_reaping = operator.snapshot().index
    assert after_reaping < with_tombstone, (with_tombstone, after_reaping)
    started = time.monotonic()
    assert operator.wait_for_change(with_tombstone, 0.5) != with_tombstone
    assert time.monotonic() - started < 0.5 + 0.5 / 16 + consul_dcs.settings.call_timeout


# ---------------------------------------------------------------------------- the error contract


def test_a_vanished_session_is_session_expired_on_renew_and_on_write(consul_dcs: Dcs) -> None:
    address = _address(consul_dcs)
    renewing = consul_dcs.lock("db1")
    session = renewing.open_session().session_id
    destroy_session(address, session)
    with pytest.raises(SessionExpired):  # 404 from session/renew
        renewing.renew()
    writing = _consul(consul_dcs.lock("db2"))
    writing.publish_member(_member("db2"))
    member_session = writing.member_session_id
    assert member_session is not None
    destroy_session(address, member_session)
    status, _, text = consul_request(
        address, "PUT", f"/v1/kv/{writing.keys.member('db2')}?acquire={member_session}", {"x": 1})
    assert status == 500 and "invalid session" in str(text).lower(), (status, text)
    # Any write of the lock's that meets this 500 sees SessionExpired (the lock's own call wrapper)...
    with pytest.raises(SessionExpired):
        writing._call("acquire with a dead session", time.monotonic() + 2.0,
                      lambda: writing._consul.kv.put(writing.keys.leader, b"x", acquire=member_session))
    # ...and publish_member takes it as the member session's end: it opens a new one and writes.
    writing.publish_member(_member("db2"))
    assert writing.member_session_id not in (None, member_session)
    assert consul_dcs.lock("observer").snapshot().member("db2") is not None


def test_the_member_record_has_no_lock_delay(consul_dcs: Dcs) -> None:
    """Its session ends early (the node deregistered): the record is back at the next publish, not
    after the lock's lock-delay, so a failover in between still sees this node's position."""
    lock = _consul(consul_dcs.lock("db1"))
    lock.try_acquire(holder("db1"))
    lock.publish_member(_member("db1"))
    session, member_session = lock.session_id, lock.member_session_id
    assert session is not None and member_session is not None
    destroy_session(_address(consul_dcs), session)
    destroy_session(_address(consul_dcs), member_session)
    with pytest.raises(SessionExpired):
        lock.renew()
    lock.publish_member(_member("db1"))
    assert consul_dcs.lock("observer").snapshot().member("db1") is not None
    with pytest.raises(LockConflict):  # the lock key itself stays in lock-delay
        lock.try_acquire(holder("db1"))


def _consul(lock: LeaseLock) -> ConsulLeaseLock:
    assert isinstance(lock, ConsulLeaseLock)
    return lock


@pytest.mark.parametrize("fault", ["NoLeader", "RateLimited"])
def test_no_leader_and_rate_limit_answers_are_dcs_unreachable(consul_dcs: Dcs, fault: str) -> None:
    _standin_only(consul_dcs)
    address = _address(consul_dcs)
    lock = consul_dcs.lock("db1")
    grant = lock.try_acquire(holder("db1"))
    standin_control(address, **{fault: True})
    try:
        status, _, text = consul_request(address, "GET", f"/v1/kv/{lock.keys.leader}")
        assert status == (500 if fault == "NoLeader" else 429), (status, text)
        calls: list[Callable[[], object]] = [
            lock.renew, lock.snapshot, lambda: lock.try_acquire(holder("db1")),
            lambda: lock.wait_for_change(1, 0.2), lambda: lock.publish_member(_member("db1")),
            lambda: consul_dcs.lock("db2").open_session(),
        ]
        for call in calls:
            with pytest.raises(DcsUnreachable):
                call()
    finally:
        standin_control(address, NoLeader=False, RateLimited=False)
    assert lock.renew().token == grant.token  # nothing was lost

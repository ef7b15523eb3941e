"""The lock contract, run unchanged against real etcd, the Consul stand-in and a real Consul."""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import statistics
import threading
import time

import pytest

from dbfence.lab.wait import wait_until
from dbfence.locks import (
    BadData,
    ClusterSnapshot,
    FailsafeList,
    HistoryEntry,
    Intent,
    LeaseLock,
    LockConflict,
    LockLost,
    MemberRecord,
    SessionExpired,
)
from dbfence.locks.etcd import EtcdLeaseLock
from tests.locks.conftest import Dcs
from tests.locks.consul_http import standin_control
from tests.locks.locks_support import holder, race_worker, record_figure


def member(node: str, role: str = "replica", healthy: bool = True) -> MemberRecord:
    return MemberRecord(
        node=node,
        role=role,
        healthy=healthy,
        reasons=() if healthy else ("select1 failed 3 times",),
        gtid_position="0-1-42",
        gtid_received="0-1-45",
        gate_state="closed",
        version="test",
        last_seen=time.time(),
    )


def test_mutual_exclusion_across_processes(dcs: Dcs) -> None:
    contenders, rounds = 4, 2
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(contenders)
    results = ctx.Queue()
    processes = [
        ctx.Process(
            target=race_worker,
            args=(dcs.config, dcs.cluster, f"p{i}", dcs.settings, barrier, results, rounds),
        )
        for i in range(contenders)
    ]
    for process in processes:
        process.start()
    try:
        reports = [results.get(timeout=90) for _ in range(contenders * rounds)]
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    errors = [report for report in reports if report[2] == "error"]
    assert not errors, errors
    tokens = []
    for round_number in range(rounds):
        winners = [r for r in reports if r[0] == round_number and r[2] == "won"]
        losers = [r for r in reports if r[0] == round_number and r[2] == "lost"]
        assert len(winners) == 1, f"round {round_number}: {reports}"
        assert len(losers) == contenders - 1
        # Every loser was told who won, with the winner's token.
        assert {loser[3] for loser in losers} == {winners[0][3]}
        tokens.append(winners[0][3])
    assert tokens == sorted(tokens) and len(set(tokens)) == rounds


def test_unrenewed_lease_loses_lock_and_member_record(dcs: Dcs) -> None:
    holder_lock = dcs.lock("db1")
    peer = dcs.lock("db2")
    bystander = dcs.lock("db3")
    stale_session = bystander.open_session().session_id
    holder_lock.try_acquire(holder("db1"))
    holder_lock.publish_member(member("db1", role="primary"))
    peer.publish_member(member("db2"))
    assert {entry.record.node for entry in peer.snapshot().members} == {"db1", "db2"}

    # db1 stops renewing (a paused or partitioned agent). Only the peer keeps its session alive.
    def gone() -> ClusterSnapshot | None:
        peer.renew()
        snapshot = peer.snapshot()
        return snapshot if snapshot.lock is None and snapshot.member("db1") is None else None

    snapshot = wait_until(
        gone, timeout=dcs.expiry_timeout(), what="db1's lock and record to expire", interval=0.5
    )
    assert snapshot.member("db2") is not None

    # The peer can take over (on Consul after the lock-delay).
    def acquire() -> int | None:
        try:
            return peer.try_acquire(holder("db2")).token
        except LockConflict:
            return None

    assert wait_until(acquire, timeout=dcs.takeover_delay() + 6.0, what="db2 to acquire", interval=0.2)
    with pytest.raises(SessionExpired):
        holder_lock.renew()
    assert holder_lock.session_id is None
    # open_session replaces a session that expired behind our back.
    fresh = bystander.open_session()
    assert fresh.session_id != stale_session and bystander.renew().session_id == fresh.session_id


class Waiter(threading.Thread):
    """A peer that waits for the lock the way the agent does: snapshot, then blocking watch."""

    def __init__(self, lock: LeaseLock) -> None:
        super().__init__(daemon=True)
        self.lock = lock
        self.waiting = threading.Event()
        self.index = 0  # of the snapshot it waits from
        self.acquired_at: float | None = None
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                snapshot = self.lock.snapshot()
                if snapshot.lock is None:
                    self.lock.try_acquire(holder(self.lock.node))
                    self.acquired_at = time.monotonic()
                    return
                self.index = snapshot.index
                self.waiting.set()
                self.lock.wait_for_change(snapshot.index, 5.0)
        except BaseException as exc:  # surfaced by the test's assertions
            self.failure = exc


def parked_queries(dcs: Dcs) -> int:
    """The blocking queries the Consul stand-in holds now (0 elsewhere)."""
    if dcs.name != "consul-standin":
        return 0
    return int(standin_control(dcs.config.endpoints[0])["BlockedQueries"])


def query_in_place(dcs: Dcs, lock: LeaseLock, index: int, parked_before: int) -> bool:
    """Whether ``lock``'s wait for a change after ``index`` has reached the server."""
    if isinstance(lock, EtcdLeaseLock):
        return lock.watch.covers(index)
    if dcs.name == "consul-standin":
        return parked_queries(dcs) > parked_before
    # A real Consul does not say which queries it holds: give the request a moment to arrive.
    time.sleep(0.2)
    return True


def test_voluntary_release_lets_waiting_peer_acquire_within_one_second(dcs: Dcs) -> None:
    first = dcs.lock("db1")
    second = dcs.lock("db2")
    first.try_acquire(holder("db1"))
    second.open_session()
    latencies = []
    holder_lock, peer = first, second
    for _ in range(3):
        parked_before = parked_queries(dcs)
        waiter = Waiter(peer)
        waiter.start()
        assert waiter.waiting.wait(10)
        # The figure starts at release: the waiter's query must be at the server by then.
        wait_until(functools.partial(query_in_place, dcs, peer, waiter.index, parked_before), timeout=10,
                   what="the waiter's blocking query to reach the server")
        released_at = time.monotonic()
        holder_lock.release()
        waiter.join(15)
        assert waiter.failure is None, waiter.failure
        assert waiter.acquired_at is not None, "the waiter never acquired the lock"
        latencies.append(waiter.acquired_at - released_at)
        holder_lock, peer = peer, holder_lock  # swap roles for the next round
    record_figure(f"{dcs.name} release->peer acquire (max of 3)", max(latencies))
    record_figure(f"{dcs.name} release->peer acquire (median of 3)", statistics.median(latencies))
    assert max(latencies) < 1.0, latencies


def test_fencing_token_strictly_increases_across_holders(dcs: Dcs) -> None:
    locks = [dcs.lock(f"db{i}") for i in (1, 2, 3)]
    tokens = []
    for lock in locks + locks[:1]:
        grant = lock.try_acquire(holder(lock.node))
        assert grant.token is not None
        snapshot = lock.snapshot()
        assert snapshot.lock is not None and snapshot.lock.token == grant.token
        assert snapshot.lock.holder is not None and snapshot.lock.holder.node == lock.node
        assert snapshot.lock.session_id == grant.session_id
        # Renewing and re-acquiring keep the same token within one term.
        assert lock.renew().token == grant.token
        assert lock.try_acquire(holder(lock.node)).token == grant.token
        tokens.append(grant.token)
        lock.release()
        assert lock.renew().token is None
    assert all(earlier < later for earlier, later in itertools.pairwise(tokens)), tokens


def test_conflict_names_the_holder_and_never_returns_false(dcs: Dcs) -> None:
    owner = dcs.lock("db1")
    other = dcs.lock("db2")
    grant = owner.try_acquire(holder("db1"))
    with pytest.raises(LockConflict) as caught:
        other.try_acquire(holder("db2"))
    assert caught.value.token == grant.token
    assert caught.value.holder is not None and "db1" in caught.value.holder
    # A release by the loser does not touch the owner's lock.
    other.release()
    assert owner.renew().token == grant.token


def test_deadline_is_send_time_plus_ttl_minus_margin_and_renew_is_fast(dcs: Dcs) -> None:
    lock = dcs.lock("db1")
    lock.try_acquire(holder("db1"))
    durations = []
    for _ in range(20):
        before = time.monotonic()
        grant = lock.renew()
        after = time.monotonic()
        durations.append(after - before)
        assert before <= grant.sent_at <= after
        assert grant.deadline == pytest.approx(grant.sent_at + dcs.settings.ttl - dcs.settings.margin)
        assert grant.token is not None
    record_figure(f"{dcs.name} renew latency median", statistics.median(durations))
    record_figure(f"{dcs.name} renew latency max", max(durations))
    assert max(durations) < dcs.settings.call_timeout


def test_member_records_are_published_and_read_back(dcs: Dcs) -> None:
    lock = dcs.lock("db1")
    record = member("db1", healthy=False)
    lock.publish_member(record)
    snapshot = dcs.lock("observer").snapshot()
    assert snapshot.member("db1") == record
    # Bound to our lease: on Consul a member session of its own, which has no lock-delay.
    assert snapshot.members[0].session_id == (getattr(lock, "member_session_id", None) or lock.session_id)
    with pytest.raises(ValueError):
        lock.publish_member(member("db9"))  # only our own record
    lock.close_session()
    assert dcs.lock("observer2").snapshot().member("db1") is None


def test_leave_releases_the_lock_at_once_and_the_record_follows_its_lease(dcs: Dcs) -> None:
    """A stopping agent leaves: the lock is free at once. On etcd its record stays until the lease
    expires (peers restarting with it still see what it holds) and a restarted agent writes over
    it; Consul closes the session (a live member session would block the restarted agent's record)."""
    leaving = dcs.lock("db1")
    leaving.try_acquire(holder("db1"))
    leaving.publish_member(member("db1", role="primary"))
    leaving.leave()
    assert leaving.session_id is None
    peer = dcs.lock("db2")
    snapshot = peer.snapshot()
    assert snapshot.lock is None
    if dcs.kind != "etcd":
        assert snapshot.member("db1") is None
        return
    kept = snapshot.member("db1")
    assert kept is not None and kept.role == "primary"
    assert peer.try_acquire(holder("db2")).token  # no lock-delay on a released lock

    def expired() -> bool:
        peer.renew()
        return peer.snapshot().member("db1") is None

    wait_until(expired, timeout=dcs.expiry_timeout(), what="db1's record to expire", interval=0.5)
    # A restarted agent's record, written over a live old one, is bound to its new lease.
    old = dcs.lock("db3")
    old.publish_member(member("db3"))
    old.leave()
    left_at = time.monotonic()
    restarted = dcs.lock("db3")
    restarted.publish_member(member("db3", healthy=False))

    def outlived_old_lease() -> bool:
        peer.renew()
        restarted.renew()
        return time.monotonic() > left_at + dcs.settings.ttl + 1.0

    wait_until(outlived_old_lease, timeout=dcs.expiry_timeout(), what="the old lease to expire", interval=0.5)
    record = peer.snapshot().member("db3")
    assert record is not None and record.healthy is False


def test_operator_force_delete_makes_holder_lose_the_lock(dcs: Dcs) -> None:
    owner = dcs.lock("db1")
    operator = dcs.lock("cli")
    grant = owner.try_acquire(holder("db1"))
    with pytest.raises(LockConflict):
        operator.force_delete_lock(expected_token=(grant.token or 0) + 1000)
    deleted = operator.force_delete_lock(expected_token=grant.token)
    assert deleted is not None and deleted.token == grant.token
    assert operator.snapshot().lock is None
    with pytest.raises(LockLost):
        owner.renew()
    assert operator.force_delete_lock() is None


def test_garbage_in_lock_key_is_bad_data_naming_the_key(dcs: Dcs) -> None:
    reader = dcs.lock("db1")
    leader_key = reader.keys.leader
    dcs.put_raw(leader_key, b"\xff{not json")
    with pytest.raises(BadData) as caught:
        reader.snapshot()
    assert caught.value.key == leader_key
    lenient = reader.snapshot(strict=False)
    assert [problem.key for problem in lenient.problems] == [leader_key]
    # The operator's way out works on garbage too.
    reader.force_delete_lock()
    assert reader.snapshot().lock is None


@pytest.mark.parametrize(
    "garbage",
    [b"[1, 2]", b'{"node": "dbx", "role": "replica"}', b'{"node": "other", "role": "r", "healthy": true}',
     b'{"node": "dbx", "role": "replica", "healthy": "yes"}', b"\x00\x01"],
    ids=["list", "missing-field", "wrong-node", "wrong-type", "binary"],
)
def test_garbage_in_member_key_is_bad_data_naming_the_key(dcs: Dcs, garbage: bytes) -> None:
    reader = dcs.lock("db1")
    reader.publish_member(member("db1"))
    bad_key = reader.keys.member("dbx")
    dcs.put_raw(bad_key, garbage)
    with pytest.raises(BadData) as caught:
        reader.snapshot()
    assert caught.value.key == bad_key
    lenient = reader.snapshot(strict=False)
    assert [problem.key for problem in lenient.problems] == [bad_key]
    assert lenient.member("db1") is not None


def test_wait_for_change_times_out_without_change(dcs: Dcs) -> None:
    lock = dcs.lock("db1")
    lock.publish_member(member("db1"))
    index = lock.snapshot().index
    started = time.monotonic()
    assert lock.wait_for_change(index, 0.5) == index
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 0.5 + dcs.settings.call_timeout


def test_intent_and_history_helpers(dcs: Dcs) -> None:
    lock = dcs.lock("db1")
    assert lock.read_intent() == Intent()
    intent = Intent(paused=True, pause_reason="maintenance", switchover_target="db2", requested_by="ops",
                    requested_at=time.time())
    lock.write_intent(intent)
    assert lock.read_intent() == intent
    assert lock.snapshot().intent == intent
    base = time.time()
    for i in range(5):
        lock.append_history(HistoryEntry(at=base + i, kind="failover", node=f"db{i}", token=i), keep=3)
    history = lock.read_history(limit=10)
    assert [entry.node for entry in history] == ["db2", "db3", "db4"]
    dcs.put_raw(lock.keys.intent, b"paused=yes")
    with pytest.raises(BadData) as caught:
        lock.read_intent()
    assert caught.value.key == lock.keys.intent


def test_failsafe_list_is_written_only_by_the_holder_and_outlives_its_session(dcs: Dcs) -> None:
    holder_lock = dcs.lock("db1")
    other = dcs.lock("db2")
    holder_lock.open_session()
    grant = holder_lock.try_acquire(holder("db1"))
    assert grant.token is not None
    assert holder_lock.snapshot().failsafe is None
    listing = FailsafeList(token=grant.token, members=("db1", "db2"), written_by="db1",
                           written_at=time.time())
    holder_lock.write_failsafe_list(listing)
    assert other.snapshot().failsafe == listing
    other.open_session()
    with pytest.raises(LockLost):
        other.write_failsafe_list(FailsafeList(token=grant.token, members=("db2",)))
    with pytest.raises(LockLost):
        holder_lock.write_failsafe_list(FailsafeList(token=grant.token + 1000, members=("db1",)))
    holder_lock.close_session()
    # Not leased: the list stays when its writer's session is gone (a node not in it must not
    # race while a primary cut off from the DCS may still run on promises).
    assert other.snapshot().failsafe == listing
    dcs.put_raw(holder_lock.keys.failsafe, b"members=db1")
    with pytest.raises(BadData):
        other.snapshot()
    assert other.snapshot(strict=False).failsafe is None

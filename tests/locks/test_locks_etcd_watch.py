"""etcd only: one watch stream, kept open, serves every wait_for_change; it follows failover and
reports a compacted index as a change. The history is read only when an entry was added.

A stream per wait cost a new gRPC stream and two threads each time anything changed (issue 18).
"""

from __future__ import annotations

import threading
import time

import grpc  # type: ignore[import-untyped,unused-ignore]
from pyetcd import etcdrpc

from dbfence.agent.sensors import DcsSensor
from dbfence.lab.wait import wait_until
from dbfence.locks import DcsUnreachable, HistoryEntry
from dbfence.locks.etcd import EtcdLeaseLock
from tests.locks.conftest import Dcs, EtcdTrio, etcd_lock_of


class _Waiter(threading.Thread):
    def __init__(self, lock: EtcdLeaseLock, after: int, timeout: float) -> None:
        super().__init__(daemon=True)
        self.lock, self.after, self.timeout = lock, after, timeout
        self.result: int | None = None
        self.error: Exception | None = None
        self.elapsed = 0.0

    def run(self) -> None:
        started = time.monotonic()
        try:
            self.result = self.lock.wait_for_change(self.after, self.timeout)
        except Exception as exc:  # reported by the test
            self.error = exc
        self.elapsed = time.monotonic() - started


def _woken_by(lock: EtcdLeaseLock, put: object) -> _Waiter:
    """Wait on ``lock`` from its current index while ``put()`` changes the cluster."""
    waiter = _Waiter(lock, lock.snapshot(strict=False, lease_ttl=False).index, timeout=10.0)
    waiter.start()
    time.sleep(0.05)  # not synchronisation: the change may come before or after the wait starts
    assert callable(put)
    put()
    waiter.join(15)
    assert waiter.error is None, waiter.error
    return waiter


def test_one_stream_serves_every_wait(etcd_dcs: tuple[Dcs, EtcdTrio]) -> None:
    dcs, _ = etcd_dcs
    lock = etcd_lock_of(dcs, "db1")
    key = f"{lock.keys.prefix}watch-test"
    for round_number in range(5):
        waiter = _woken_by(lock, lambda n=round_number: dcs.put_raw(key, f"{n}".encode()))
        assert waiter.result is not None and waiter.result > waiter.after
        assert waiter.elapsed < 2.0, f"round {round_number}: woken after {waiter.elapsed:.2f} s"
    index = lock.snapshot(strict=False, lease_ttl=False).index
    assert lock.wait_for_change(index, 0.3) == index  # nothing changed: the wait times out
    assert lock.watch.streams_opened == 1


def test_the_watch_follows_when_its_member_dies(etcd_dcs: tuple[Dcs, EtcdTrio]) -> None:
    dcs, trio = etcd_dcs
    leader = trio.leader()
    follower = next(m for m in trio.members if m is not leader)
    lock = etcd_lock_of(dcs, "db1", endpoints=[follower.client_url, *(m.client_url for m in trio.members
                                                                       if m is not follower)])
    key = f"{lock.keys.prefix}watch-test"
    index = lock.snapshot(strict=False, lease_ttl=False).index
    assert lock.wait_for_change(index, 0.1) == index
    assert lock.watch.streams_opened == 1
    trio.kill(follower)
    # What the agent's DCS sensor does: wait, and read a snapshot (which fails over) after each.
    deadline = time.monotonic() + 10
    while True:
        try:
            index = lock.snapshot(strict=False, lease_ttl=False).index
            lock.wait_for_change(index, 0.2)
            break
        except DcsUnreachable:
            assert time.monotonic() < deadline, "the watch never moved to a live member"
            time.sleep(0.05)
    assert lock.transport.current_endpoint != follower.client_url.removeprefix("http://")
    other = next(m for m in trio.members if m is not follower)
    waiter = _woken_by(lock, lambda: _put_at(other.client_url, key, b"after failover"))
    assert waiter.result is not None and waiter.result > waiter.after
    assert waiter.elapsed < 2.0
    assert lock.watch.streams_opened == 2


def test_a_compacted_index_is_reported_as_a_change(etcd_dcs: tuple[Dcs, EtcdTrio]) -> None:
    dcs, trio = etcd_dcs
    lock = etcd_lock_of(dcs, "db1")
    key = f"{lock.keys.prefix}watch-test"
    old = lock.snapshot(strict=False, lease_ttl=False).index
    dcs.put_raw(key, b"one")
    dcs.put_raw(key, b"two")
    newest = lock.snapshot(strict=False, lease_ttl=False).index
    with grpc.insecure_channel(trio.members[0].client_url.removeprefix("http://")) as channel:
        compaction = etcdrpc.CompactionRequest(revision=newest, physical=True)
        etcdrpc.KVStub(channel).Compact(compaction, timeout=5.0)
    started = time.monotonic()
    result = lock.wait_for_change(old, 5.0)
    assert result > old
    assert time.monotonic() - started < 2.0
    # The caller reads afresh and waits from there: a new stream, which times out quietly.
    index = lock.snapshot(strict=False, lease_ttl=False).index
    assert lock.wait_for_change(index, 0.2) == index


def _put_at(url: str, key: str, value: bytes) -> None:
    with grpc.insecure_channel(url.removeprefix("http://")) as channel:
        etcdrpc.KVStub(channel).Put(etcdrpc.PutRequest(key=key.encode(), value=value), timeout=5.0)


def test_the_dcs_sensor_reads_the_history_only_when_an_entry_is_added(etcd_dcs: tuple[Dcs, EtcdTrio]) -> None:
    """The snapshot carries the index of the newest history write: other changes (members'
    positions, every few hundred milliseconds) no longer cost a history read each."""
    dcs, _ = etcd_dcs
    lock = etcd_lock_of(dcs, "db1")
    reads: list[float] = []
    real_read_history = lock.read_history

    def counted_read_history(limit: int = 50) -> tuple[HistoryEntry, ...]:
        reads.append(time.monotonic())
        return real_read_history(limit)

    lock.read_history = counted_read_history  # type: ignore[method-assign]
    sensor = DcsSensor(lock, threading.Event(), poll=0.2)
    sensor.start()
    try:
        wait_until(lambda: sensor.latest.snapshot, timeout=10, what="the first snapshot")
        assert len(reads) == 1
        key = f"{lock.keys.prefix}watch-test"
        for n in range(5):
            dcs.put_raw(key, f"{n}".encode())
        newest = lock.snapshot(strict=False, lease_ttl=False).index
        wait_until(lambda: _seen(sensor) >= newest, timeout=10, what="the sensor to see the changes")
        assert len(reads) == 1
        lock.append_history(HistoryEntry(at=time.time(), kind="failover", node="db2", token=7))
        wait_until(lambda: any(e.node == "db2" for e in sensor.latest.history), timeout=10,
                   what="the sensor to read the new entry")
        assert len(reads) == 2
    finally:
        sensor.stop()


def _seen(sensor: DcsSensor) -> int:
    snapshot = sensor.latest.snapshot
    return -1 if snapshot is None else snapshot.index

"""etcd only: the client survives the death of its member and of the leader; quorum loss fails renewals.

The trio is restored (every member restarted and healthy) after each test.
"""

from __future__ import annotations

import signal
import time

import pytest

from dbfence.locks import DcsUnreachable, LeaseGrant, LockError
from tests.locks.conftest import Dcs, EtcdTrio, etcd_lock_of
from tests.locks.locks_support import holder, record_figure


def renew_until_success(lock_renew: object, timeout: float) -> tuple[LeaseGrant, float, int]:
    """Call renew until it succeeds; return the grant, the time it took and the failures seen."""
    assert callable(lock_renew)
    started = time.monotonic()
    failures = 0
    while True:
        try:
            grant = lock_renew()
            assert isinstance(grant, LeaseGrant)
            return grant, time.monotonic() - started, failures
        except DcsUnreachable:
            failures += 1
            if time.monotonic() - started > timeout:
                raise
            time.sleep(0.05)


def test_survives_death_of_the_member_it_talks_to(etcd_dcs: tuple[Dcs, EtcdTrio]) -> None:
    dcs, trio = etcd_dcs
    leader = trio.leader()
    follower = next(m for m in trio.members if m is not leader)
    # The client starts with the first endpoint: make that a follower, so this test is
    # about the client's own member dying (the leader's death is the next test).
    lock = etcd_lock_of(dcs, "db1", endpoints=[follower.client_url, *(m.client_url for m in trio.members
                                                                       if m is not follower)])
    first = lock.try_acquire(holder("db1"))
    assert lock.transport.current_endpoint == follower.client_url.removeprefix("http://")
    trio.kill(follower)
    killed_at = time.monotonic()
    grant = lock.renew()  # one call: the failover happens inside it
    took = time.monotonic() - killed_at
    record_figure("etcd renew right after death of the client's member (follower)", took)
    assert grant.token == first.token
    assert lock.transport.current_endpoint != follower.client_url.removeprefix("http://")
    assert took < dcs.settings.call_timeout
    assert grant.sent_at < first.deadline


def test_survives_death_of_the_leader(etcd_dcs: tuple[Dcs, EtcdTrio]) -> None:
    dcs, trio = etcd_dcs
    leader = trio.leader()
    # Worst case: the client talks to the leader itself, so it must fail over AND wait for an election.
    lock = etcd_lock_of(dcs, "db1", endpoints=[leader.client_url, *(m.client_url for m in trio.members
                                                                     if m is not leader)])
    first = lock.try_acquire(holder("db1"))
    trio.kill(leader)
    killed_at = time.monotonic()
    grant, _took, failures = renew_until_success(lock.renew, timeout=10.0)
    outage = time.monotonic() - killed_at
    record_figure("etcd renew outage after leader death (kill -> renewed)", outage)
    record_figure("etcd failed renew calls during leader election", failures, unit="calls")
    assert grant.token == first.token
    # The lock survived the election: still ours, same token, and nobody else can take it.
    snapshot = lock.snapshot()
    assert snapshot.lock is not None and snapshot.lock.token == first.token
    new_leader = trio.leader()
    assert new_leader.name != leader.name


def test_quorum_loss_fails_renewals_and_the_deadline_runs_out(etcd_dcs: tuple[Dcs, EtcdTrio]) -> None:
    dcs, trio = etcd_dcs
    lock = etcd_lock_of(dcs, "db1")
    last_good = lock.try_acquire(holder("db1"))
    talking_to = trio.member_for(lock.transport.current_endpoint)
    # Keep the member we talk to (it will hang without a leader) and kill the two others.
    for member in [m for m in trio.members if m is not talking_to]:
        trio.kill(member)
    attempts = 0
    while time.monotonic() <= last_good.deadline + 0.5:
        started = time.monotonic()
        with pytest.raises(LockError) as caught:
            last_good = lock.renew()  # would overwrite last_good only on (wrong) success
        elapsed = time.monotonic() - started
        attempts += 1
        assert isinstance(caught.value, DcsUnreachable), caught.value
        # Every failed call gives up within its budget, well before the margin is eaten.
        assert elapsed < dcs.settings.call_timeout + 0.2, elapsed
        assert elapsed < dcs.settings.margin
    assert attempts >= 2
    # Nothing extended the deadline: it has passed, so the gate would be closed now.
    assert time.monotonic() > last_good.deadline


def test_a_hung_member_costs_at_most_one_call_budget(etcd_dcs: tuple[Dcs, EtcdTrio]) -> None:
    """SIGSTOP keeps the member's sockets open but silent: only gRPC deadlines can save us."""
    dcs, trio = etcd_dcs
    leader = trio.leader()
    follower = next(m for m in trio.members if m is not leader)
    lock = etcd_lock_of(dcs, "db1", endpoints=[follower.client_url, *(m.client_url for m in trio.members
                                                                       if m is not follower)])
    first = lock.try_acquire(holder("db1"))
    follower.process.signal(signal.SIGSTOP)
    try:
        outcomes = []
        for _ in range(2):
            started = time.monotonic()
            try:
                grant = lock.renew()
                outcomes.append(("ok", time.monotonic() - started))
                assert grant.token == first.token
            except DcsUnreachable:
                outcomes.append(("unreachable", time.monotonic() - started))
        first_outcome, first_elapsed = outcomes[0]
        record_figure(f"etcd renew, own member hung (SIGSTOP), first call {first_outcome}", first_elapsed)
        assert all(elapsed < dcs.settings.call_timeout + 0.1 for _, elapsed in outcomes), outcomes
        assert outcomes[-1][0] == "ok", outcomes  # by the second call at the latest, another member answers
        assert lock.transport.current_endpoint != follower.client_url.removeprefix("http://")
    finally:
        follower.process.signal(signal.SIGCONT)

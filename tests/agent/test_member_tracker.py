"""MemberTracker: a peer's vanished record keeps counting for one TTL (lossless races wait for it)."""

from __future__ import annotations

from dataclasses import replace

from dbfence.agent.daemon import MemberTracker
from dbfence.agent.decide import RefusalReason, race_refusals
from dbfence.agent.observation import LockView, Observation
from dbfence.agent.round_input import local_binlog_state
from dbfence.agent.sensors import DbFacts, HealthSummary
from dbfence.locks.model import ClusterSnapshot, MemberEntry, encode, parse_member
from dbfence.locks.model import MemberRecord as RawRecord
from tests.agent.core_builders import CONFIG, ME, observe, pos

TTL = 10.0


def raw(node: str, position: str, received: str = "") -> RawRecord:
    return RawRecord(node=node, role="replica", healthy=True, gtid_position=position, gtid_received=received,
                     priority=100, server_id=2)


def snapshot(*records: RawRecord) -> ClusterSnapshot:
    return ClusterSnapshot(cluster="c", index=1, lock=None,
                           members=tuple(MemberEntry(f"members/{r.node}", r, "s") for r in records))


def names(tracker: MemberTracker, snap: ClusterSnapshot, now: float) -> list[str]:
    return [record.name for record in tracker.records(snap, now)]


def test_a_vanished_peer_record_is_kept_unchanged_for_one_ttl_then_dropped() -> None:
    tracker = MemberTracker(node=ME, keep_vanished=TTL)
    peer = raw("n2", "0-1-100", "0-1-110")
    assert names(tracker, snapshot(raw(ME, "0-1-100"), peer), 100.0) == [ME, "n2"]
    kept = tracker.records(snapshot(raw(ME, "0-1-100")), 104.0)
    assert [record.name for record in kept] == [ME, "n2"]
    assert kept[1].last_seen == 100.0  # unchanged since it was last read: stale, not fresh
    assert kept[1].info.holds is not None and str(kept[1].info.holds) == "0-1-110"
    assert names(tracker, snapshot(raw(ME, "0-1-100")), 110.0) == [ME, "n2"]
    assert names(tracker, snapshot(raw(ME, "0-1-100")), 110.5) == [ME]
    assert names(tracker, snapshot(raw(ME, "0-1-100")), 111.0) == [ME]  # gone for good
    # It counts again, as new, once its node publishes again.
    assert names(tracker, snapshot(raw(ME, "0-1-100"), peer), 112.0) == [ME, "n2"]


def test_our_own_vanished_record_is_not_kept() -> None:
    """We write ours anew at once; a kept copy would make the core think it is still there."""
    tracker = MemberTracker(node=ME, keep_vanished=TTL)
    tracker.records(snapshot(raw(ME, "0-1-100")), 100.0)
    assert tracker.records(snapshot(), 101.0) == ()


def test_a_lossless_replica_does_not_race_past_a_peer_whose_record_just_vanished() -> None:
    """i20: a Consul session that ended early took a peer's record (holding more) with it; until a
    TTL has passed, the race waits for it as for any stale record that holds more."""
    tracker = MemberTracker(node=ME, keep_vanished=TTL)
    ahead = raw("n2", "0-1-100", "0-1-120")
    tracker.records(snapshot(ahead), 100.0)

    def race_at(now: float) -> tuple[RefusalReason, ...]:
        members = tracker.records(snapshot(), now)
        base = observe(now=now, lock=LockView(reachable=True), peers=())
        obs: Observation = replace(base, members=(*base.members, *members))
        return tuple(refusal.reason for refusal in race_refusals(obs, CONFIG))

    assert race_at(101.0) == (RefusalReason.PEER_MORE_ADVANCED,)
    assert race_at(109.0) == (RefusalReason.PEER_MORE_ADVANCED,)
    assert race_at(111.0) == ()  # surely gone (its session has expired): the race goes on


def test_a_peer_binlog_state_is_read_with_its_position() -> None:
    """Issue 16's takeover compares binlog states: known only with the position it came with."""
    tracker = MemberTracker(node=ME, keep_vanished=TTL)
    with_state = replace(raw("n2", "0-2-2"), gtid_binlog_state="0-1-1,0-2-2")
    empty_binlog = replace(raw("n3", "0-1-1"), gtid_binlog_state="")
    no_position = replace(raw("n4", ""), gtid_binlog_state="0-1-1")
    records = {r.name: r.info for r in tracker.records(snapshot(with_state, empty_binlog, no_position), 1.0)}
    assert str(records["n2"].binlog_state) == "0-1-1,0-2-2" and str(records["n2"].history) == "0-1-1,0-2-2"
    assert records["n3"].binlog_state is not None and str(records["n3"].history) == "0-1-1"
    assert records["n4"].binlog_state is None and records["n4"].history is None
    # A state that does not parse is unknown; the record still counts (its position ranks it).
    bad = replace(raw("n5", "0-1-1"), gtid_binlog_state="0-1")
    [record] = MemberTracker(node=ME, keep_vanished=TTL).records(snapshot(bad), 2.0)
    assert record.info.binlog_state is None and str(record.info.position) == "0-1-1"


def test_the_local_binlog_state_is_read_with_the_position() -> None:
    facts = DbFacts(at=0.0, health=HealthSummary(), position=pos("0-2-2"), binlog_state="0-1-1,0-2-2")
    assert str(local_binlog_state(facts)) == "0-1-1,0-2-2"
    assert local_binlog_state(replace(facts, binlog_state="")) is not None  # an empty binlog
    assert local_binlog_state(replace(facts, position=None)) is None  # mysqld not read
    assert local_binlog_state(replace(facts, binlog_state="garbage")) is None  # unknown, never guessed



def test_a_killed_peer_state_at_the_kill_survives_the_dcs_round_trip() -> None:
    """A mysqld the fence killed publishes no position, only the binlog state at the kill: it
    comes back through the record's encoding as that (and as nothing else), a bad one as none."""
    killed = replace(raw("n3", ""), role="fenced", server_id=3, gtid_binlog_state_at_kill="0-2-4,0-3-5")
    [entry] = parse_snapshot_of(killed)
    assert entry.gtid_binlog_state_at_kill == "0-2-4,0-3-5"
    tracker = MemberTracker(node=ME, keep_vanished=TTL)
    [record] = tracker.records(snapshot(entry), 1.0)
    assert str(record.info.binlog_state_at_kill) == "0-2-4,0-3-5" and record.info.server_id == 3
    assert record.info.binlog_state is None and record.info.history is None and not tracker.problems
    bad = replace(killed, gtid_binlog_state_at_kill="0-3")
    [record] = MemberTracker(node=ME, keep_vanished=TTL).records(snapshot(bad), 2.0)
    assert record.info.binlog_state_at_kill is None
    # An older agent's record has no such field: none.
    [record] = MemberTracker(node=ME, keep_vanished=TTL).records(snapshot(raw("n2", "0-2-4")), 3.0)
    assert record.info.binlog_state_at_kill is None


def parse_snapshot_of(record: RawRecord) -> list[RawRecord]:
    return [parse_member(f"members/{record.node}", encode(record), record.node)]

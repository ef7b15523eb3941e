"""Which DCS changes wake the agent's loop at once: everything but members' replication progress."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dbfence.agent.sensors import progress_only
from dbfence.locks.model import ClusterSnapshot, HolderInfo, Intent, LockState, MemberEntry, MemberRecord


def snapshot(*records: MemberRecord, token: int = 5, intent: Intent | None = None) -> ClusterSnapshot:
    lock = LockState(key="k", holder=HolderInfo("db1", "10.0.0.1", 3307, 0.0), token=token, session_id="s",
                     ttl_left=None)
    members = tuple(MemberEntry(f"m/{r.node}", r, "s") for r in records)
    return ClusterSnapshot(cluster="c", index=1, lock=lock, members=members, intent=intent or Intent())


PRIMARY = MemberRecord(node="db1", role="primary", healthy=True, gate_state="admitting",
                       gtid_position="0-1-10", last_seen=100.0)
REPLICA = MemberRecord(node="db2", role="replica", healthy=True, gate_state="blocking",
                       gtid_position="0-1-9", gtid_received="0-1-10", lag_seconds=0.0, last_seen=100.0)


def test_replication_progress_alone_does_not_wake() -> None:
    later = (replace(PRIMARY, gtid_position="0-1-11", gtid_binlog_state="0-1-11", last_seen=101.0),
             replace(REPLICA, gtid_position="0-1-11", gtid_received="0-1-11", lag_seconds=1.0,
                     last_seen=101.0))
    assert progress_only(snapshot(PRIMARY, REPLICA), snapshot(*later))


@pytest.mark.parametrize("after", [
    snapshot(PRIMARY, replace(REPLICA, healthy=False)),
    snapshot(PRIMARY, replace(REPLICA, role="candidate")),
    snapshot(replace(PRIMARY, gate_state="blocking"), REPLICA),
    snapshot(PRIMARY, replace(REPLICA, seen_token=6)),
    snapshot(PRIMARY),  # a member left
    snapshot(PRIMARY, REPLICA, replace(REPLICA, node="db3")),  # one joined
    snapshot(PRIMARY, REPLICA, token=6),  # the lock changed hands
    snapshot(PRIMARY, REPLICA, intent=Intent(switchover_target="db2")),
    ClusterSnapshot(cluster="c", index=1, lock=None, members=snapshot(PRIMARY, REPLICA).members),
], ids=["health", "role", "gate", "seen token", "left", "joined", "lock", "intent", "lock gone"])
def test_any_other_change_wakes(after: ClusterSnapshot) -> None:
    assert not progress_only(snapshot(PRIMARY, REPLICA), after)

"""Why a switchover must not start, in the words the CLI and the HTTP API give the operator."""

from __future__ import annotations

import pytest

from dbfence.locks.model import ClusterSnapshot, HolderInfo, Intent, LockState, MemberEntry, MemberRecord
from dbfence.locks.switchover import switchover_refusal


def snapshot(*targets: MemberRecord, paused: bool = False) -> ClusterSnapshot:
    primary = MemberRecord(node="db1", role="primary", healthy=True, gate_state="admitting", lag_seconds=0.0)
    lock = LockState(key="k", holder=HolderInfo("db1", "10.0.0.1", 3307, 0.0), token=5, session_id="s",
                     ttl_left=9.0)
    members = tuple(MemberEntry(f"m/{r.node}", r, "s") for r in (primary, *targets))
    return ClusterSnapshot(cluster="c", index=1, lock=lock, members=members, intent=Intent(paused=paused))


def replica(**changes: object) -> MemberRecord:
    fields: dict[str, object] = {"node": "db2", "role": "replica", "healthy": True, "lag_seconds": 0.0}
    fields.update(changes)
    return MemberRecord(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("target", "snap", "expected"), [
    ("db9", snapshot(replica()), "unknown node 'db9' (members: db1, db2)"),
    ("db1", snapshot(replica()), "db1 is already the primary"),
    ("db2", snapshot(replica(role="fenced")), "db2 is fenced, not a replica"),
    ("db2", snapshot(replica(healthy=False, reasons=("select tripped: timeout",))),
     "db2 is unhealthy: select tripped: timeout"),
    ("db2", snapshot(replica(lag_seconds=12.0)), "db2 is behind: lag 12s (limit 5s)"),
    ("db2", snapshot(replica(lag_seconds=None)),
     "db2 may be behind: its lag is unknown (is its replication running?)"),
    ("db2", snapshot(replica(), paused=True), "the cluster is paused: `dbfence resume` first"),
    ("db2", snapshot(replica()), None),
])
def test_switchover_refusals(target: str, snap: ClusterSnapshot, expected: str | None) -> None:
    assert switchover_refusal(snap, target, max_lag=5.0) == expected

"""Whether a switchover may start, judged on a cluster snapshot alone.

Shared by ``dbfence switchover`` (the CLI refuses before it writes the intent) and the agent
(its HTTP switchover command, which refuses the same way). Kept out of the CLI's module so that
the agent does not import the CLI (click, its options, the status commands) to run it (issue 18).
"""

from __future__ import annotations

from dbfence.locks.model import ClusterSnapshot, MemberRecord


def admitting_primary(snapshot: ClusterSnapshot) -> MemberRecord | None:
    """The member that holds the lock and says its gate admits."""
    holder = snapshot.lock.holder.node if snapshot.lock and snapshot.lock.holder else None
    for entry in snapshot.members:
        record = entry.record
        if record.node == holder and record.role == "primary" and record.gate_state == "admitting":
            return record
    return None


def switchover_refusal(snapshot: ClusterSnapshot, target: str, max_lag: float) -> str | None:
    """Why a switchover to ``target`` must not start now, or None."""
    records = {e.record.node: e.record for e in snapshot.members}
    primary = admitting_primary(snapshot)
    if target not in records:
        return f"unknown node {target!r} (members: {', '.join(sorted(records)) or 'none'})"
    if primary is None:
        return "no primary admits right now: nothing to switch over from"
    if primary.node == target:
        return f"{target} is already the primary"
    record = records[target]
    if record.role != "replica":
        return f"{target} is {record.role}, not a replica"
    if not record.healthy:
        return f"{target} is unhealthy: {'; '.join(record.reasons)}"
    if record.lag_seconds is None:
        return f"{target} may be behind: its lag is unknown (is its replication running?)"
    if record.lag_seconds > max_lag:
        return f"{target} is behind: lag {record.lag_seconds:g}s (limit {max_lag:g}s)"
    if snapshot.intent.paused:
        return "the cluster is paused: `dbfence resume` first"
    return None

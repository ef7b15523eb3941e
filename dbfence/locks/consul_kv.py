"""What the Consul KV entries of a cluster mean: the lock, the member records, the intent.

Pure parsing of the JSON answers of ``GET /v1/kv/<prefix>?recurse``; a bad entry is a
:class:`BadData` problem (raised when ``strict``, else reported in the snapshot).
"""

from __future__ import annotations

from typing import Any

from dbfence.locks.base import intent_and_failsafe, lock_holder, snapshot_problem
from dbfence.locks.errors import BadData
from dbfence.locks.model import (
    ClusterKeys,
    ClusterSnapshot,
    HistoryEntry,
    LockState,
    MemberEntry,
    parse_history,
    parse_member,
)


def lock_state(keys: ClusterKeys, entry: dict[str, Any], strict: bool, problems: list[BadData]) -> LockState:
    """The lock key's entry as a :class:`LockState`; the token is the acquiring write's ModifyIndex."""
    return LockState(
        key=keys.leader,
        holder=lock_holder(keys, entry.get("Value"), strict, problems),
        token=int(entry.get("ModifyIndex", 0)),
        session_id=str(entry.get("Session") or ""),
        ttl_left=None,
        lock_index=int(entry.get("LockIndex", 0)),
        modify_index=int(entry.get("ModifyIndex", 0)),
    )


def held_lock(
    keys: ClusterKeys, entry: dict[str, Any] | None, strict: bool, problems: list[BadData]
) -> LockState | None:
    """The lock state, or ``None`` when the key is absent or not held by any session."""
    if entry is None:
        return None
    if entry.get("Session"):
        return lock_state(keys, entry, strict, problems)
    value = entry.get("Value")
    if value:
        # Released keys keep the last holder's JSON: it must still parse.
        lock_holder(keys, value, strict, problems)
    return None


def snapshot_of(keys: ClusterKeys, index: int, entries: list[dict[str, Any]],
                strict: bool) -> ClusterSnapshot:
    """The cluster as one recursive read of its prefix shows it."""
    problems: list[BadData] = []
    by_key = {str(entry.get("Key")): entry for entry in entries if isinstance(entry, dict)}
    lock = held_lock(keys, by_key.get(keys.leader), strict, problems)
    members = []
    for key, entry in sorted(by_key.items()):
        if not key.startswith(keys.members_prefix):
            continue
        try:
            record = parse_member(key, entry.get("Value"), keys.node_of_member_key(key))
        except BadData as error:
            snapshot_problem(strict, problems, error)
            continue
        members.append(MemberEntry(key=key, record=record, session_id=str(entry.get("Session") or "")))
    values = {key: entry.get("Value") for key, entry in by_key.items()}
    intent, failsafe = intent_and_failsafe(keys, values, strict, problems)
    return ClusterSnapshot(
        cluster=keys.cluster,
        index=index,
        lock=lock,
        members=tuple(members),
        intent=intent,
        problems=tuple(problems),
        failsafe=failsafe,
    )


def newest_history(entries: list[Any] | None, limit: int) -> tuple[HistoryEntry, ...]:
    """The ``limit`` newest history entries of a recursive read (their keys sort by time)."""
    newest = sorted((e for e in entries or [] if isinstance(e, dict)), key=lambda e: str(e.get("Key")))[
        -limit:
    ]
    return tuple(parse_history(str(e.get("Key")), e.get("Value")) for e in newest)

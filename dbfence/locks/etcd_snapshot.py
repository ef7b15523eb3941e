"""The cluster snapshot in etcd: one read-only txn (served at one revision: a consistent picture)
and how its answer becomes a :class:`~dbfence.locks.model.ClusterSnapshot`."""

from __future__ import annotations

from typing import Any

from pyetcd import etcdrpc

from dbfence.locks.base import intent_and_failsafe, lock_holder, snapshot_problem
from dbfence.locks.errors import BadData
from dbfence.locks.etcd_transport import lease_hex, range_request
from dbfence.locks.model import (
    ClusterKeys,
    ClusterSnapshot,
    LockState,
    MemberEntry,
    parse_member,
)


def _newest_history_key(keys: ClusterKeys) -> Any:
    """The history key written last (its name only): readers fetch the history when it moves."""
    request = range_request(keys.history_prefix, prefix=True)
    request.keys_only = True
    request.sort_target = etcdrpc.RangeRequest.MOD
    request.sort_order = etcdrpc.RangeRequest.DESCEND
    request.limit = 1
    return request


def snapshot_request(keys: ClusterKeys) -> Any:
    """Lock, members, intent, failsafe list, and the newest history write, in one txn."""
    ops = [
        etcdrpc.RequestOp(request_range=range_request(keys.leader)),
        etcdrpc.RequestOp(request_range=range_request(keys.members_prefix, prefix=True)),
        etcdrpc.RequestOp(request_range=range_request(keys.intent)),
        etcdrpc.RequestOp(request_range=range_request(keys.failsafe)),
        etcdrpc.RequestOp(request_range=_newest_history_key(keys)),
    ]
    return etcdrpc.TxnRequest(compare=[], success=ops, failure=[])


def lock_state(keys: ClusterKeys, kv: Any, ttl_left: float | None, strict: bool,
               problems: list[BadData]) -> LockState:
    return LockState(
        key=keys.leader,
        holder=lock_holder(keys, kv.value, strict, problems),
        token=int(kv.create_revision),
        session_id=lease_hex(int(kv.lease)),
        ttl_left=ttl_left,
        modify_index=int(kv.mod_revision),
    )


def parse_snapshot(keys: ClusterKeys, response: Any, ttl_left: float | None, strict: bool) -> ClusterSnapshot:
    """The answer of :func:`snapshot_request`; in a lenient read, bad keys are skipped and listed."""
    problems: list[BadData] = []
    lock_kvs = response.responses[0].response_range.kvs
    lock = lock_state(keys, lock_kvs[0], ttl_left, strict, problems) if lock_kvs else None
    members = []
    for kv in response.responses[1].response_range.kvs:
        key = kv.key.decode("utf-8", "replace")
        try:
            record = parse_member(key, kv.value, keys.node_of_member_key(key))
        except BadData as error:
            snapshot_problem(strict, problems, error)
            continue
        members.append(MemberEntry(key=key, record=record, session_id=lease_hex(int(kv.lease))))
    optional = (*response.responses[2].response_range.kvs, *response.responses[3].response_range.kvs)
    intent, failsafe = intent_and_failsafe(
        keys, {kv.key.decode("utf-8", "replace"): kv.value for kv in optional}, strict, problems
    )
    history_kvs = response.responses[4].response_range.kvs
    return ClusterSnapshot(
        cluster=keys.cluster,
        index=int(response.header.revision),
        lock=lock,
        members=tuple(sorted(members, key=lambda entry: entry.record.node)),
        intent=intent,
        problems=tuple(problems),
        failsafe=failsafe,
        history_index=int(history_kvs[0].mod_revision) if history_kvs else 0,
    )

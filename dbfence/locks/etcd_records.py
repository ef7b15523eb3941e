"""The etcd keys beside the lock: the failsafe list, the operator's intent, the history.

Kept apart from ``etcd.py``, which owns the lease and the lock key: these are plain reads and
compare-and-set writes of keys that live without a lease, each one call (or one txn) with its own
deadline of ``call_timeout`` seconds. :class:`~dbfence.locks.etcd.EtcdLeaseLock` delegates its
methods of the same names here.
"""

from __future__ import annotations

from dataclasses import replace

from pyetcd import etcdrpc

from dbfence.locks.base import deadline_in, failsafe_relied_on, history_id
from dbfence.locks.errors import LockConflict, LockLost
from dbfence.locks.etcd_snapshot import lock_state
from dbfence.locks.etcd_transport import EtcdTransport, get_key, kv_stub, range_request
from dbfence.locks.model import (
    ClusterKeys,
    FailsafeList,
    HistoryEntry,
    Intent,
    encode,
    parse_failsafe_list,
    parse_history,
    parse_intent,
)


class EtcdRecords:
    """Failsafe list, intent and history of one cluster, over the lock's transport."""

    def __init__(self, transport: EtcdTransport, keys: ClusterKeys, call_timeout: float) -> None:
        self.transport = transport
        self.keys = keys
        self.call_timeout = call_timeout

    # ------------------------------------------------------------------ the failsafe list

    def write_failsafe_list(self, listing: FailsafeList, lease_id: int | None) -> None:
        if lease_id is None:
            raise LockLost("no lease: the failsafe list is written by the lock holder only")
        leader = self.keys.leader.encode()
        compare = [
            etcdrpc.Compare(key=leader, target=etcdrpc.Compare.CREATE, result=etcdrpc.Compare.EQUAL,
                            create_revision=listing.token),
            etcdrpc.Compare(key=leader, target=etcdrpc.Compare.LEASE, result=etcdrpc.Compare.EQUAL,
                            lease=lease_id),
        ]
        put = etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=self.keys.failsafe.encode(),
                                                               value=encode(listing)))
        request = etcdrpc.TxnRequest(compare=compare, success=[put], failure=[])
        response = self.transport.call(
            "write failsafe list",
            deadline_in(self.call_timeout),
            lambda ch, timeout, md: kv_stub(ch).Txn(request, timeout=timeout, metadata=md),
        )
        if not response.succeeded:
            raise LockLost(f"{self.keys.leader} no longer has token {listing.token}")

    def delete_failsafe_list(self, *, while_held: bool = False) -> bytes | None:
        failsafe, leader = self.keys.failsafe.encode(), self.keys.leader.encode()
        read = etcdrpc.TxnRequest(success=[etcdrpc.RequestOp(request_range=range_request(self.keys.failsafe)),
                                           etcdrpc.RequestOp(request_range=range_request(self.keys.leader))])
        seen = self.transport.call(
            "read failsafe list", deadline_in(self.call_timeout),
            lambda ch, timeout, md: kv_stub(ch).Txn(read, timeout=timeout, metadata=md))
        listing = seen.responses[0].response_range.kvs
        if not listing:
            return None
        held = seen.responses[1].response_range.kvs
        if held and not while_held:
            raise failsafe_relied_on(lock_state(self.keys, held[0], None, False, []))
        # Delete what we read, and only while the lock is still free (unless told otherwise).
        compare = [etcdrpc.Compare(key=failsafe, target=etcdrpc.Compare.MOD, result=etcdrpc.Compare.EQUAL,
                                   mod_revision=listing[0].mod_revision)]
        if not while_held:
            compare.append(etcdrpc.Compare(key=leader, target=etcdrpc.Compare.CREATE,
                                           result=etcdrpc.Compare.EQUAL, create_revision=0))
        delete = etcdrpc.TxnRequest(compare=compare, success=[etcdrpc.RequestOp(
            request_delete_range=etcdrpc.DeleteRangeRequest(key=failsafe))], failure=[])
        response = self.transport.call(
            "delete failsafe list", deadline_in(self.call_timeout),
            lambda ch, timeout, md: kv_stub(ch).Txn(delete, timeout=timeout, metadata=md))
        if not response.succeeded:
            raise LockConflict(self.keys.failsafe, "the failsafe list or the lock changed while deleting "
                               "it; nothing deleted")
        return bytes(listing[0].value)

    def drop_failsafe_members(self, nodes: frozenset[str]) -> tuple[FailsafeList, FailsafeList] | None:
        deadline = deadline_in(self.call_timeout)
        kvs = get_key(self.transport, self.keys.failsafe, deadline, "read failsafe list").kvs
        if not kvs:
            return None
        before = parse_failsafe_list(self.keys.failsafe, kvs[0].value)
        after = replace(before, members=tuple(m for m in before.members if m not in nodes))
        key = self.keys.failsafe.encode()
        request = etcdrpc.TxnRequest(
            compare=[etcdrpc.Compare(key=key, target=etcdrpc.Compare.MOD, result=etcdrpc.Compare.EQUAL,
                                     mod_revision=kvs[0].mod_revision)],
            success=[etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=key, value=encode(after)))],
            failure=[])
        response = self.transport.call(
            "rewrite failsafe list", deadline_in(self.call_timeout),
            lambda ch, timeout, md: kv_stub(ch).Txn(request, timeout=timeout, metadata=md))
        if not response.succeeded:
            raise LockConflict(self.keys.failsafe, "the failsafe list changed while rewriting it; nothing "
                               "changed")
        return before, after

    # ------------------------------------------------------------------ intent and history

    def read_intent(self) -> Intent:
        kvs = get_key(self.transport, self.keys.intent, deadline_in(self.call_timeout), "read intent").kvs
        return parse_intent(self.keys.intent, kvs[0].value) if kvs else Intent()

    def write_intent(self, intent: Intent) -> None:
        request = etcdrpc.PutRequest(key=self.keys.intent.encode(), value=encode(intent))
        self.transport.call(
            "write intent",
            deadline_in(self.call_timeout),
            lambda ch, timeout, md: kv_stub(ch).Put(request, timeout=timeout, metadata=md),
        )

    def append_history(self, entry: HistoryEntry, keep: int = 100) -> None:
        deadline = deadline_in(self.call_timeout)
        key = self.keys.history_entry(history_id(entry))
        put = etcdrpc.PutRequest(key=key.encode(), value=encode(entry))
        self.transport.call(
            "append history",
            deadline,
            lambda ch, timeout, md: kv_stub(ch).Put(put, timeout=timeout, metadata=md),
        )
        listing = range_request(self.keys.history_prefix, prefix=True)
        listing.keys_only = True
        keys = [
            kv.key
            for kv in self.transport.call(
                "list history",
                deadline,
                lambda ch, timeout, md: kv_stub(ch).Range(listing, timeout=timeout, metadata=md),
            ).kvs
        ]
        if len(keys) > keep:
            # Keys sort by time: delete the oldest range in one request.
            oldest = etcdrpc.DeleteRangeRequest(key=keys[0], range_end=keys[len(keys) - keep])
            self.transport.call(
                "trim history",
                deadline,
                lambda ch, timeout, md: kv_stub(ch).DeleteRange(oldest, timeout=timeout, metadata=md),
            )

    def read_history(self, limit: int = 50) -> tuple[HistoryEntry, ...]:
        request = range_request(self.keys.history_prefix, prefix=True)
        request.sort_order = etcdrpc.RangeRequest.DESCEND
        request.sort_target = etcdrpc.RangeRequest.KEY
        request.limit = limit
        kvs = self.transport.call(
            "read history",
            deadline_in(self.call_timeout),
            lambda ch, timeout, md: kv_stub(ch).Range(request, timeout=timeout, metadata=md),
        ).kvs
        return tuple(parse_history(kv.key.decode("utf-8", "replace"), kv.value) for kv in reversed(kvs))

"""etcd v3 backend: a lease, and the lock key created under ``create_revision == 0``.

Client library: ``pyetcd`` (etcd-sdk-python), which ships the etcd v3 gRPC API
generated for current protobuf (``etcd3`` 0.12 cannot be imported with
protobuf >= 4). We use its generated stubs and messages and drive the calls
ourselves, because the lock needs two things its client classes do not give:

* a deadline on EVERY call computed from the caller's remaining budget (its
  client has one fixed timeout, and its lease keep-alive helper is a generator
  whose errors surface late);
* failover that retries at once on the next member (its multi-endpoint client
  marks a failed member unusable for 5 minutes and never retries the call).

How calls reach etcd (deadlines, failover between members, authentication) is in
``etcd_transport.py``; the watch that wakes waiters on changes is in ``etcd_watch.py``; the
snapshot txn in ``etcd_snapshot.py``; the failsafe list, intent and history in ``etcd_records.py``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc  # type: ignore[import-untyped,unused-ignore]
from pyetcd import etcdrpc

from dbfence.locks.base import (
    LeaseGrant,
    LeaseLock,
    LockSettings,
    conflict_from,
    deadline_in,
    make_grant,
)
from dbfence.locks.errors import (
    DcsUnreachable,
    LockConflict,
    LockLost,
    SessionExpired,
)
from dbfence.locks.etcd_records import EtcdRecords
from dbfence.locks.etcd_snapshot import lock_state, parse_snapshot, snapshot_request
from dbfence.locks.etcd_transport import (
    MIN_ATTEMPT,
    EtcdOptions,
    EtcdTransport,
    Metadata,
    get_key,
    kv_stub,
    lease_hex,
)
from dbfence.locks.etcd_watch import PrefixWatch
from dbfence.locks.model import (
    ClusterKeys,
    ClusterSnapshot,
    FailsafeList,
    HistoryEntry,
    HolderInfo,
    Intent,
    LockState,
    MemberRecord,
    encode,
    parse_holder,
)

__all__ = ["EtcdLeaseLock", "EtcdOptions", "etcd_lock", "lease_hex"]


class EtcdLeaseLock(LeaseLock):
    """The etcd implementation of :class:`~dbfence.locks.base.LeaseLock`.

    Fencing token: the lock key's create revision (a new key per holder, and etcd
    revisions only grow). ``session_id``: the lease id in hex, as etcdctl prints it.
    """

    def __init__(self, options: EtcdOptions, cluster: str, node: str, settings: LockSettings) -> None:
        self.keys = ClusterKeys(cluster)
        self.keys.member(node)  # validates the node name
        self.node = node
        self.settings = settings
        self.transport = EtcdTransport(options)
        self.watch = PrefixWatch(self.transport, self.keys.prefix.encode())
        self.records = EtcdRecords(self.transport, self.keys, settings.call_timeout)
        self._state = threading.Lock()
        self._lease_id: int | None = None
        self._token: int | None = None

    # ------------------------------------------------------------------ small helpers

    @property
    def kind(self) -> str:
        return "etcd"

    @property
    def session_id(self) -> str | None:
        with self._state:
            return lease_hex(self._lease_id) if self._lease_id else None

    def _keepalive(self, lease_id: int, deadline: float) -> int:
        """Refresh the lease; return the TTL the server granted. Raises SessionExpired."""

        def rpc(channel: grpc.Channel, timeout: float, md: Metadata) -> int:
            stream = etcdrpc.LeaseStub(channel).LeaseKeepAlive(
                iter([etcdrpc.LeaseKeepAliveRequest(ID=lease_id)]), timeout=timeout, metadata=md
            )
            try:
                for response in stream:
                    return int(response.TTL)
            finally:
                stream.cancel()
            raise DcsUnreachable("lease keep-alive: the stream closed without an answer")

        ttl = self.transport.call("lease keep-alive", deadline, rpc)
        if ttl <= 0:
            self._forget_session(lease_id)
            raise SessionExpired(f"lease {lease_hex(lease_id)} has expired")
        return ttl

    def _forget_session(self, lease_id: int) -> None:
        with self._state:
            if self._lease_id == lease_id:
                self._lease_id = None
                self._token = None

    def _require_lease(self) -> int:
        with self._state:
            if self._lease_id is None:
                raise SessionExpired("no lease is open (call open_session)")
            return self._lease_id

    # ------------------------------------------------------------------ session

    def open_session(self) -> LeaseGrant:
        with self._state:
            open_already = self._lease_id is not None
        if open_already:
            try:
                return self.renew()
            except SessionExpired:
                pass  # it expired behind our back: open a new one below
        ttl_asked = self.settings.ttl
        sent_at = time.monotonic()
        response = self.transport.call(
            "lease grant",
            sent_at + self.settings.call_timeout,
            lambda ch, timeout, md: etcdrpc.LeaseStub(ch).LeaseGrant(
                etcdrpc.LeaseGrantRequest(TTL=ttl_asked, ID=0), timeout=timeout, metadata=md
            ),
        )
        if response.error:
            raise DcsUnreachable(f"lease grant refused: {response.error}")
        with self._state:
            self._lease_id = int(response.ID)
            self._token = None
        # A server may round a short TTL up, never down: the smaller value is the safe one.
        ttl = min(ttl_asked, int(response.TTL))
        return make_grant(lease_hex(int(response.ID)), ttl, sent_at, self.settings.margin, None)

    def renew(self) -> LeaseGrant:
        lease_id = self._require_lease()
        sent_at = time.monotonic()
        deadline = sent_at + self.settings.call_timeout
        ttl = min(self.settings.ttl, self._keepalive(lease_id, deadline))
        lock_kv = get_key(self.transport, self.keys.leader, deadline, "read lock").kvs
        ours = bool(lock_kv) and int(lock_kv[0].lease) == lease_id
        with self._state:
            held_before = self._token is not None and self._lease_id == lease_id
            self._token = int(lock_kv[0].create_revision) if ours else None
            token = self._token
        if held_before and not ours:
            raise LockLost(f"{self.keys.leader} is no longer bound to lease {lease_hex(lease_id)}")
        return make_grant(lease_hex(lease_id), ttl, sent_at, self.settings.margin, token)

    def close_session(self) -> None:
        with self._state:
            lease_id = self._lease_id
        if lease_id is None:
            return
        deadline = deadline_in(self.settings.call_timeout)
        # Revoking deletes every key bound to the lease at once: the lock and our record.
        with contextlib.suppress(SessionExpired):  # already gone is fine
            self.transport.call(
                "lease revoke",
                deadline,
                lambda ch, timeout, md: etcdrpc.LeaseStub(ch).LeaseRevoke(
                    etcdrpc.LeaseRevokeRequest(ID=lease_id), timeout=timeout, metadata=md
                ),
            )
        self._forget_session(lease_id)

    def leave(self) -> None:
        """Release the lock and the ``primary`` key; the lease, and our member record bound to
        it, expire by themselves (see :meth:`LeaseLock.leave`): a new lease writes over the record."""
        with self._state:
            lease_id = self._lease_id
        if lease_id is None:
            return
        with contextlib.suppress(SessionExpired):  # already gone: so are the keys
            self.release()
            self.withdraw_primary()
        self._forget_session(lease_id)

    # ------------------------------------------------------------------ the lock

    def try_acquire(self, holder: HolderInfo) -> LeaseGrant:
        self._check_own_node("holder", holder.node)
        with self._state:
            lease_id = self._lease_id
        if lease_id is None:
            grant = self.open_session()
            lease_id = self._require_lease()
            sent_at = grant.sent_at
            ttl = grant.ttl
        else:
            sent_at = time.monotonic()
            ttl = min(self.settings.ttl, self._keepalive(lease_id, sent_at + self.settings.call_timeout))
        key = self.keys.leader.encode()
        compare = etcdrpc.Compare(
            key=key, target=etcdrpc.Compare.CREATE, result=etcdrpc.Compare.EQUAL, create_revision=0
        )
        put = etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=key, value=encode(holder), lease=lease_id))
        read = etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=key))
        request = etcdrpc.TxnRequest(compare=[compare], success=[put, read], failure=[read])
        try:
            response = self.transport.call(
                "acquire txn",
                sent_at + self.settings.call_timeout,
                lambda ch, timeout, md: kv_stub(ch).Txn(request, timeout=timeout, metadata=md),
            )
        except SessionExpired:
            self._forget_session(lease_id)
            raise
        kvs = response.responses[-1].response_range.kvs
        if not kvs:  # deleted between compare and read cannot happen inside a txn; be safe
            raise DcsUnreachable("acquire txn returned no lock key")
        kv = kvs[0]
        if int(kv.lease) != lease_id:
            raise conflict_from(lock_state(self.keys, kv, None, False, []))
        token = int(kv.create_revision)
        with self._state:
            if self._lease_id == lease_id:
                self._token = token
        return make_grant(lease_hex(lease_id), ttl, sent_at, self.settings.margin, token)

    def release(self) -> None:
        with self._state:
            lease_id = self._lease_id
        if lease_id is None:
            return
        # Delete only if the key is still bound to OUR lease (also covers an acquire
        # whose answer we never saw).
        self._delete_if_ours(self.keys.leader, lease_id, "release txn")
        with self._state:
            if self._lease_id == lease_id:
                self._token = None

    def publish_primary(self, holder: HolderInfo) -> None:
        """Write the admitting primary's gate address under ``primary``, bound to our lease.

        Applications watch this key; it vanishes with our lease if we die.
        """
        lease_id = self._require_lease()
        request = etcdrpc.PutRequest(key=self.keys.primary.encode(), value=encode(holder), lease=lease_id)
        self.transport.call(
            "publish primary",
            deadline_in(self.settings.call_timeout),
            lambda ch, timeout, md: kv_stub(ch).Put(request, timeout=timeout, metadata=md),
        )

    def withdraw_primary(self) -> None:
        """Delete the ``primary`` key if our lease wrote it (a fencing node leaves discovery)."""
        with self._state:
            lease_id = self._lease_id
        if lease_id is not None:
            self._delete_if_ours(self.keys.primary, lease_id, "withdraw primary txn")

    def _delete_if_ours(self, key_name: str, lease_id: int, what: str) -> None:
        """One txn: delete ``key_name`` only while it is bound to ``lease_id``."""
        key = key_name.encode()
        compare = etcdrpc.Compare(
            key=key, target=etcdrpc.Compare.LEASE, result=etcdrpc.Compare.EQUAL, lease=lease_id
        )
        delete = etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=key))
        request = etcdrpc.TxnRequest(compare=[compare], success=[delete], failure=[])
        self.transport.call(
            what,
            deadline_in(self.settings.call_timeout),
            lambda ch, timeout, md: kv_stub(ch).Txn(request, timeout=timeout, metadata=md),
        )

    def read_primary(self) -> HolderInfo | None:
        """The published primary (None when no primary admits)."""
        deadline = deadline_in(self.settings.call_timeout)
        response = get_key(self.transport, self.keys.primary, deadline, "read primary")
        if not response.kvs:
            return None
        return parse_holder(self.keys.primary, response.kvs[0].value)

    def force_delete_lock(self, expected_token: int | None = None) -> LockState | None:
        key = self.keys.leader.encode()
        deadline = deadline_in(self.settings.call_timeout)
        read = etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=key))
        delete = etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=key))
        if expected_token is None:
            compare = []
            success = [read, delete]
        else:
            compare = [
                etcdrpc.Compare(
                    key=key,
                    target=etcdrpc.Compare.CREATE,
                    result=etcdrpc.Compare.EQUAL,
                    create_revision=expected_token,
                )
            ]
            success = [read, delete]
        request = etcdrpc.TxnRequest(compare=compare, success=success, failure=[read])
        response = self.transport.call(
            "force delete txn",
            deadline,
            lambda ch, timeout, md: kv_stub(ch).Txn(request, timeout=timeout, metadata=md),
        )
        kvs = response.responses[0].response_range.kvs
        state = lock_state(self.keys, kvs[0], None, False, []) if kvs else None
        if not response.succeeded:
            found = f"token {state.token}" if state else "no lock"
            raise LockConflict(
                self.keys.leader, f"expected token {expected_token}, found {found}; nothing deleted"
            )
        return state

    # ------------------------------------------------------------------ members and reads

    def publish_member(self, record: MemberRecord) -> None:
        self._check_own_node("member record", record.node)
        with self._state:
            lease_id = self._lease_id
        if lease_id is None:
            self.open_session()
            lease_id = self._require_lease()
        request = etcdrpc.PutRequest(
            key=self.keys.member(self.node).encode(), value=encode(record), lease=lease_id
        )
        try:
            self.transport.call(
                "publish member",
                deadline_in(self.settings.call_timeout),
                lambda ch, timeout, md: kv_stub(ch).Put(request, timeout=timeout, metadata=md),
            )
        except SessionExpired:
            self._forget_session(lease_id)
            raise

    def snapshot(self, strict: bool = True, *, lease_ttl: bool = True) -> ClusterSnapshot:
        deadline = deadline_in(self.settings.call_timeout)
        request = snapshot_request(self.keys)
        response = self.transport.call(
            "snapshot",
            deadline,
            lambda ch, timeout, md: kv_stub(ch).Txn(request, timeout=timeout, metadata=md),
        )
        ttl_left = None
        lock_kvs = response.responses[0].response_range.kvs
        if lock_kvs and lease_ttl:
            ttl_left = self._ttl_left(int(lock_kvs[0].lease), deadline)
        return parse_snapshot(self.keys, response, ttl_left, strict)

    def _ttl_left(self, lease_id: int, deadline: float) -> float | None:
        if lease_id == 0:
            return None
        if deadline - time.monotonic() < MIN_ATTEMPT:
            return None
        try:
            response = self.transport.call(
                "lease time-to-live",
                deadline,
                lambda ch, timeout, md: etcdrpc.LeaseStub(ch).LeaseTimeToLive(
                    etcdrpc.LeaseTimeToLiveRequest(ID=lease_id), timeout=timeout, metadata=md
                ),
            )
        except (DcsUnreachable, SessionExpired):
            return None  # display only: not worth failing the snapshot
        return float(response.TTL) if response.TTL >= 0 else 0.0

    def wait_for_change(self, after_index: int, timeout: float) -> int:
        return self.watch.wait(after_index, timeout, self.settings.call_timeout)

    # ------------------------------------------------------------------ failsafe list, intent, history

    def write_failsafe_list(self, listing: FailsafeList) -> None:
        with self._state:
            lease_id = self._lease_id
        self.records.write_failsafe_list(listing, lease_id)

    def delete_failsafe_list(self, *, while_held: bool = False) -> bytes | None:
        return self.records.delete_failsafe_list(while_held=while_held)

    def drop_failsafe_members(self, nodes: frozenset[str]) -> tuple[FailsafeList, FailsafeList] | None:
        return self.records.drop_failsafe_members(nodes)

    def read_intent(self) -> Intent:
        return self.records.read_intent()

    def write_intent(self, intent: Intent) -> None:
        self.records.write_intent(intent)

    def append_history(self, entry: HistoryEntry, keep: int = 100) -> None:
        self.records.append_history(entry, keep)

    def read_history(self, limit: int = 50) -> tuple[HistoryEntry, ...]:
        return self.records.read_history(limit)

    def close(self) -> None:
        self.watch.close()
        self.transport.close()


def etcd_lock(
    endpoints: Sequence[str],
    cluster: str,
    node: str,
    settings: LockSettings | None = None,
    **options: Any,
) -> EtcdLeaseLock:
    """Shorthand: ``etcd_lock(["http://127.0.0.1:2379"], "prod", "db1")``."""
    return EtcdLeaseLock(
        EtcdOptions(endpoints=tuple(endpoints), **options), cluster, node, settings or LockSettings()
    )

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

Failover: endpoints are tried in turn, starting with the last one that worked.
A member that refuses connections fails in microseconds and the next one is tried
in the same call; a member that hangs (partitioned, no leader) costs at most a
part of the budget, and the next call starts elsewhere. Every write is safe to
repeat, so a retry after an unknown outcome is harmless.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc  # type: ignore[import-untyped,unused-ignore]
from pyetcd import etcdrpc

from dbfence.locks.base import (
    LeaseGrant,
    LeaseLock,
    LockSettings,
    conflict_from,
    history_id,
    make_grant,
    snapshot_problem,
)
from dbfence.locks.errors import (
    BadData,
    DcsAccessDenied,
    DcsUnreachable,
    LockConflict,
    LockError,
    LockLost,
    SessionExpired,
)
from dbfence.locks.model import (
    ClusterKeys,
    ClusterSnapshot,
    FailsafeList,
    HistoryEntry,
    HolderInfo,
    Intent,
    LockState,
    MemberEntry,
    MemberRecord,
    encode,
    parse_failsafe_list,
    parse_history,
    parse_holder,
    parse_intent,
    parse_member,
)

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]

# Codes after which another member may well succeed.
_RETRY_ELSEWHERE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
}
# Reconnect quickly to a member that comes back (gRPC's default backoff grows to 2 min).
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# Below this much budget another attempt is pointless.
_MIN_ATTEMPT = 0.05


def _range_end(prefix: bytes) -> bytes:
    """etcd range end that covers every key starting with ``prefix``."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def lease_hex(lease_id: int) -> str:
    return format(lease_id, "x") if lease_id else ""


@dataclass(frozen=True)
class EtcdOptions:
    """How to reach etcd.

    ``endpoints``: ``http://host:port``, ``https://host:port`` or ``host:port``.
    TLS is used for ``https`` endpoints or whenever ``ca_cert`` is given; ``cert`` and
    ``key`` add a client certificate. ``user``/``password`` enable etcd authentication.
    """

    endpoints: tuple[str, ...]
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both cert and key")
        if (self.user is None) != (self.password is None):
            raise ValueError("etcd authentication needs both user and password")


class _Member:
    """One etcd endpoint: its channel (created lazily) and auth token."""

    def __init__(self, url: str, options: EtcdOptions) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if not parts.hostname or not parts.port:
            raise ValueError(f"etcd endpoint {url!r} must name a host and a port")
        self.label = f"{parts.hostname}:{parts.port}"
        self.secure = parts.scheme == "https" or options.ca_cert is not None
        self._options = options
        self._channel: grpc.Channel | None = None
        self.token: str | None = None
        self._lock = threading.Lock()

    def channel(self) -> grpc.Channel:
        with self._lock:
            if self._channel is None:
                if self.secure:
                    self._channel = grpc.secure_channel(self.label, self._credentials(), _CHANNEL_OPTIONS)
                else:
                    self._channel = grpc.insecure_channel(self.label, _CHANNEL_OPTIONS)
            return self._channel

    def _credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            with open(path, "rb") as handle:
                return handle.read()

        return grpc.ssl_channel_credentials(
            root_certificates=read(self._options.ca_cert),
            private_key=read(self._options.key),
            certificate_chain=read(self._options.cert),
        )

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None


class EtcdTransport:
    """Runs one gRPC call with a total deadline, failing over between members."""

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self.members = [_Member(url, options) for url in options.endpoints]
        self._preferred = 0

    @property
    def current_endpoint(self) -> str:
        return self.members[self._preferred % len(self.members)].label

    def call(self, what: str, deadline: float, rpc: Callable[[grpc.Channel, float, Metadata], T]) -> T:
        """Run ``rpc(channel, timeout, metadata)`` on members in turn until it works or time is up."""
        count = len(self.members)
        start = self._preferred
        last_error = "no attempt was possible within the timeout"
        last_label: str | None = None
        for step in range(count):
            member = self.members[(start + step) % count]
            remaining = deadline - time.monotonic()
            if remaining < _MIN_ATTEMPT:
                break
            # Keep some budget for the next member unless this is the last one.
            attempt = remaining if step == count - 1 else max(_MIN_ATTEMPT, remaining * 0.6)
            try:
                result = self._attempt(member, deadline, attempt, rpc)
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
                detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
                if code in _RETRY_ELSEWHERE:
                    last_error = f"{what}: {code.name} {detail}"
                    last_label = member.label
                    self._preferred = (start + step + 1) % count
                    continue
                raise _translate(what, code, detail or "", member.label) from None
            self._preferred = (start + step) % count
            return result
        raise DcsUnreachable(last_error, last_label)

    def _attempt(
        self,
        member: _Member,
        deadline: float,
        attempt: float,
        rpc: Callable[[grpc.Channel, float, Metadata], T],
    ) -> T:
        channel = member.channel()
        if self.options.user is not None and member.token is None:
            self._authenticate(member, channel, attempt)
        try:
            return rpc(channel, max(_MIN_ATTEMPT, min(attempt, deadline - time.monotonic())), _md(member))
        except grpc.RpcError as exc:
            if not (isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.UNAUTHENTICATED):
                raise
            if self.options.user is None:
                raise
            # Simple tokens expire (5 minutes by default): log in again once.
            member.token = None
            self._authenticate(member, channel, deadline - time.monotonic())
            return rpc(channel, max(_MIN_ATTEMPT, deadline - time.monotonic()), _md(member))

    def _authenticate(self, member: _Member, channel: grpc.Channel, timeout: float) -> None:
        request = etcdrpc.AuthenticateRequest(name=self.options.user, password=self.options.password)
        response = etcdrpc.AuthStub(channel).Authenticate(request, timeout=max(_MIN_ATTEMPT, timeout))
        member.token = str(response.token)

    def close(self) -> None:
        for member in self.members:
            member.close()


def _md(member: _Member) -> Metadata:
    return (("token", member.token),) if member.token else ()


# etcd reports some credential problems as INVALID_ARGUMENT: recognise them by their text.
_AUTH_DETAILS = ("authentication failed", "user name is empty", "permission denied", "invalid auth token")


def _translate(what: str, code: grpc.StatusCode, detail: str, label: str) -> LockError:
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or any(
        text in detail for text in _AUTH_DETAILS
    ):
        return DcsAccessDenied(f"{what}: {detail} ({label})")
    if code == grpc.StatusCode.NOT_FOUND and "lease not found" in detail:
        return SessionExpired(f"{what}: etcd says {detail}")
    return DcsUnreachable(f"{what}: {code.name} {detail}", label)


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

    def _deadline(self) -> float:
        return time.monotonic() + self.settings.call_timeout

    def _kv(self, channel: grpc.Channel) -> Any:
        return etcdrpc.KVStub(channel)

    def _range(self, key: str, prefix: bool = False) -> Any:
        request = etcdrpc.RangeRequest(key=key.encode())
        if prefix:
            request.range_end = _range_end(key.encode())
        return request

    def _get(self, key: str, deadline: float, what: str) -> Any:
        request = self._range(key)
        return self.transport.call(
            what,
            deadline,
            lambda ch, timeout, md: self._kv(ch).Range(request, timeout=timeout, metadata=md),
        )

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

    def _lock_state(
        self, kv: Any, ttl_left: float | None, strict: bool, problems: list[BadData]
    ) -> LockState:
        key = self.keys.leader
        holder: HolderInfo | None
        try:
            holder = parse_holder(key, kv.value)
        except BadData as error:
            snapshot_problem(strict, problems, error)
            holder = None
        return LockState(
            key=key,
            holder=holder,
            token=int(kv.create_revision),
            session_id=lease_hex(int(kv.lease)),
            ttl_left=ttl_left,
            modify_index=int(kv.mod_revision),
        )

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
        lock_kv = self._get(self.keys.leader, deadline, "read lock").kvs
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
        deadline = self._deadline()
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
                lambda ch, timeout, md: self._kv(ch).Txn(request, timeout=timeout, metadata=md),
            )
        except SessionExpired:
            self._forget_session(lease_id)
            raise
        kvs = response.responses[-1].response_range.kvs
        if not kvs:  # deleted between compare and read cannot happen inside a txn; be safe
            raise DcsUnreachable("acquire txn returned no lock key")
        kv = kvs[0]
        if int(kv.lease) != lease_id:
            raise conflict_from(self._lock_state(kv, None, False, []))
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
            self._deadline(),
            lambda ch, timeout, md: self._kv(ch).Put(request, timeout=timeout, metadata=md),
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
            self._deadline(),
            lambda ch, timeout, md: self._kv(ch).Txn(request, timeout=timeout, metadata=md),
        )

    def read_primary(self) -> HolderInfo | None:
        """The published primary (None when no primary admits)."""
        response = self._get(self.keys.primary, self._deadline(), "read primary")
        if not response.kvs:
            return None
        return parse_holder(self.keys.primary, response.kvs[0].value)

    def force_delete_lock(self, expected_token: int | None = None) -> LockState | None:
        key = self.keys.leader.encode()
        deadline = self._deadline()
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
            lambda ch, timeout, md: self._kv(ch).Txn(request, timeout=timeout, metadata=md),
        )
        kvs = response.responses[0].response_range.kvs
        state = self._lock_state(kvs[0], None, False, []) if kvs else None
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
                self._deadline(),
                lambda ch, timeout, md: self._kv(ch).Put(request, timeout=timeout, metadata=md),
            )
        except SessionExpired:
            self._forget_session(lease_id)
            raise

    def snapshot(self, strict: bool = True, *, lease_ttl: bool = True) -> ClusterSnapshot:
        deadline = self._deadline()
        ops = [
            etcdrpc.RequestOp(request_range=self._range(self.keys.leader)),
            etcdrpc.RequestOp(request_range=self._range(self.keys.members_prefix, prefix=True)),
            etcdrpc.RequestOp(request_range=self._range(self.keys.intent)),
            etcdrpc.RequestOp(request_range=self._range(self.keys.failsafe)),
        ]
        # A txn of reads is served at one revision: a consistent picture.
        request = etcdrpc.TxnRequest(compare=[], success=ops, failure=[])
        response = self.transport.call(
            "snapshot",
            deadline,
            lambda ch, timeout, md: self._kv(ch).Txn(request, timeout=timeout, metadata=md),
        )
        problems: list[BadData] = []
        lock_kvs = response.responses[0].response_range.kvs
        lock = None
        if lock_kvs:
            ttl_left = self._ttl_left(int(lock_kvs[0].lease), deadline) if lease_ttl else None
            lock = self._lock_state(lock_kvs[0], ttl_left, strict, problems)
        members = []
        for kv in response.responses[1].response_range.kvs:
            key = kv.key.decode("utf-8", "replace")
            try:
                record = parse_member(key, kv.value, self.keys.node_of_member_key(key))
            except BadData as error:
                snapshot_problem(strict, problems, error)
                continue
            members.append(MemberEntry(key=key, record=record, session_id=lease_hex(int(kv.lease))))
        intent = Intent()
        intent_kvs = response.responses[2].response_range.kvs
        if intent_kvs:
            try:
                intent = parse_intent(self.keys.intent, intent_kvs[0].value)
            except BadData as error:
                snapshot_problem(strict, problems, error)
        failsafe = None
        failsafe_kvs = response.responses[3].response_range.kvs
        if failsafe_kvs:
            try:
                failsafe = parse_failsafe_list(self.keys.failsafe, failsafe_kvs[0].value)
            except BadData as error:
                snapshot_problem(strict, problems, error)
        return ClusterSnapshot(
            cluster=self.keys.cluster,
            index=int(response.header.revision),
            lock=lock,
            members=tuple(sorted(members, key=lambda entry: entry.record.node)),
            intent=intent,
            problems=tuple(problems),
            failsafe=failsafe,
        )

    def _ttl_left(self, lease_id: int, deadline: float) -> float | None:
        if lease_id == 0:
            return None
        if deadline - time.monotonic() < _MIN_ATTEMPT:
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
        prefix = self.keys.prefix.encode()
        create = etcdrpc.WatchCreateRequest(
            key=prefix, range_end=_range_end(prefix), start_revision=after_index + 1
        )
        started = time.monotonic()
        wait_until = started + max(0.0, timeout)

        def rpc(channel: grpc.Channel, call_timeout: float, md: Metadata) -> int:
            # The stream must outlive the call budget: it lasts until wait_until.
            stream_timeout = max(_MIN_ATTEMPT, wait_until - time.monotonic()) + call_timeout
            # "hasleader" makes a member cut off from the quorum refuse the watch
            # instead of silently delivering nothing.
            stream = etcdrpc.WatchStub(channel).Watch(
                iter([etcdrpc.WatchRequest(create_request=create)]),
                timeout=stream_timeout,
                metadata=(*md, ("hasleader", "true")),
            )
            return self._first_change(stream, after_index, wait_until)

        return self.transport.call("watch", wait_until + self.settings.call_timeout, rpc)

    def _first_change(self, stream: Any, after_index: int, wait_until: float) -> int:
        created = False
        timer = threading.Timer(max(0.0, wait_until - time.monotonic()), stream.cancel)
        timer.daemon = True
        timer.start()
        try:
            for response in _responses(stream):
                if response.created:
                    created = True
                if response.compact_revision:
                    # Our index was compacted away: report a change so the caller rereads.
                    return max(after_index + 1, int(response.header.revision))
                if response.canceled:
                    raise DcsUnreachable(f"watch canceled by etcd: {response.cancel_reason}")
                if response.events:
                    return max(int(event.kv.mod_revision) for event in response.events)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            # Cancelled by our timer after the watch was set up: the wait simply ended.
            if created and code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
                return after_index
            raise
        finally:
            timer.cancel()
            stream.cancel()
        if created:
            return after_index
        raise DcsUnreachable("watch stream ended before it was created")

    def write_failsafe_list(self, listing: FailsafeList) -> None:
        with self._state:
            lease_id = self._lease_id
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
            self._deadline(),
            lambda ch, timeout, md: self._kv(ch).Txn(request, timeout=timeout, metadata=md),
        )
        if not response.succeeded:
            raise LockLost(f"{self.keys.leader} no longer has token {listing.token}")

    def delete_failsafe_list(self, *, while_held: bool = False) -> bytes | None:
        failsafe, leader = self.keys.failsafe.encode(), self.keys.leader.encode()
        read = etcdrpc.TxnRequest(success=[etcdrpc.RequestOp(request_range=self._range(self.keys.failsafe)),
                                           etcdrpc.RequestOp(request_range=self._range(self.keys.leader))])
        seen = self.transport.call(
            "read failsafe list", self._deadline(),
            lambda ch, timeout, md: self._kv(ch).Txn(read, timeout=timeout, metadata=md))
        listing = seen.responses[0].response_range.kvs
        if not listing:
            return None
        held = seen.responses[1].response_range.kvs
        if held and not while_held:
            state = self._lock_state(held[0], None, False, [])
            who = state.holder.describe() if state.holder else "an unreadable holder"
            raise LockConflict(self.keys.leader, f"held by {who} (token {state.token}), which relies on "
                               "the failsafe list; nothing deleted", state.holder.node if state.holder
                               else None, state.token)
        # Delete what we read, and only while the lock is still free (unless told otherwise).
        compare = [etcdrpc.Compare(key=failsafe, target=etcdrpc.Compare.MOD, result=etcdrpc.Compare.EQUAL,
                                   mod_revision=listing[0].mod_revision)]
        if not while_held:
            compare.append(etcdrpc.Compare(key=leader, target=etcdrpc.Compare.CREATE,
                                           result=etcdrpc.Compare.EQUAL, create_revision=0))
        delete = etcdrpc.TxnRequest(compare=compare, success=[etcdrpc.RequestOp(
            request_delete_range=etcdrpc.DeleteRangeRequest(key=failsafe))], failure=[])
        response = self.transport.call(
            "delete failsafe list", self._deadline(),
            lambda ch, timeout, md: self._kv(ch).Txn(delete, timeout=timeout, metadata=md))
        if not response.succeeded:
            raise LockConflict(self.keys.failsafe, "the failsafe list or the lock changed while deleting "
                               "it; nothing deleted")
        return bytes(listing[0].value)

    def drop_failsafe_members(self, nodes: frozenset[str]) -> tuple[FailsafeList, FailsafeList] | None:
        kvs = self._get(self.keys.failsafe, self._deadline(), "read failsafe list").kvs
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
            "rewrite failsafe list", self._deadline(),
            lambda ch, timeout, md: self._kv(ch).Txn(request, timeout=timeout, metadata=md))
        if not response.succeeded:
            raise LockConflict(self.keys.failsafe, "the failsafe list changed while rewriting it; nothing "
                               "changed")
        return before, after

    def read_intent(self) -> Intent:
        kvs = self._get(self.keys.intent, self._deadline(), "read intent").kvs
        return parse_intent(self.keys.intent, kvs[0].value) if kvs else Intent()

    def write_intent(self, intent: Intent) -> None:
        request = etcdrpc.PutRequest(key=self.keys.intent.encode(), value=encode(intent))
        self.transport.call(
            "write intent",
            self._deadline(),
            lambda ch, timeout, md: self._kv(ch).Put(request, timeout=timeout, metadata=md),
        )

    def append_history(self, entry: HistoryEntry, keep: int = 100) -> None:
        deadline = self._deadline()
        key = self.keys.history_entry(history_id(entry))
        put = etcdrpc.PutRequest(key=key.encode(), value=encode(entry))
        self.transport.call(
            "append history",
            deadline,
            lambda ch, timeout, md: self._kv(ch).Put(put, timeout=timeout, metadata=md),
        )
        listing = self._range(self.keys.history_prefix, prefix=True)
        listing.keys_only = True
        keys = [
            kv.key
            for kv in self.transport.call(
                "list history",
                deadline,
                lambda ch, timeout, md: self._kv(ch).Range(listing, timeout=timeout, metadata=md),
            ).kvs
        ]
        if len(keys) > keep:
            # Keys sort by time: delete the oldest range in one request.
            oldest = etcdrpc.DeleteRangeRequest(key=keys[0], range_end=keys[len(keys) - keep])
            self.transport.call(
                "trim history",
                deadline,
                lambda ch, timeout, md: self._kv(ch).DeleteRange(oldest, timeout=timeout, metadata=md),
            )

    def read_history(self, limit: int = 50) -> tuple[HistoryEntry, ...]:
        request = self._range(self.keys.history_prefix, prefix=True)
        request.sort_order = etcdrpc.RangeRequest.DESCEND
        request.sort_target = etcdrpc.RangeRequest.KEY
        request.limit = limit
        kvs = self.transport.call(
            "read history",
            self._deadline(),
            lambda ch, timeout, md: self._kv(ch).Range(request, timeout=timeout, metadata=md),
        ).kvs
        return tuple(parse_history(kv.key.decode("utf-8", "replace"), kv.value) for kv in reversed(kvs))

    def close(self) -> None:
        self.transport.close()


def _responses(stream: Any) -> Iterator[Any]:
    yield from stream


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

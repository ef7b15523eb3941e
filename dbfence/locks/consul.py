"""Consul backend: a TTL session, and the lock key taken with ``PUT ?acquire=<session>``.

Client library: python-consul2 (module ``consul``), with a per-call time budget so a renew
made of two requests still ends within ``call_timeout`` (:mod:`dbfence.locks.consul_http`).
This module keeps the sessions' and the lock's state. Layout: the session parameters are in
:mod:`dbfence.locks.consul_session`, the reading of KV entries in :mod:`dbfence.locks.consul_kv`,
the failsafe list, intent and history (keys without a session) in
:mod:`dbfence.locks.consul_records`, the HTTP client and its errors in :mod:`dbfence.locks.consul_http`.

Session: ``TTL = settings.ttl`` (Consul accepts 10..86400 s), ``Behavior=delete``
(when the session is invalidated, the lock key and our member record are deleted,
so a dead agent's record vanishes), bound to NO health check, and a lock-delay of at
least ``TTL - margin`` (see :func:`effective_lock_delay`).

Why both: a session bound to the node's ``serfHealth`` check (Consul's default when
no check list is sent) dies the moment that check goes critical - a gossip hiccup,
``consul leave``, a restarted client agent - seconds after our last renewal, while our
gate keeps admitting until ``last renewal + TTL - margin``. Without checks only the TTL
(never before 1 x TTL), an explicit destroy and the node's deregistration can end the
session; the last two can still come early, so the lock-delay makes Consul refuse
every ``?acquire`` of the keys the session held until our gate deadline has passed,
whatever ended it. A voluntary ``?release`` applies no lock-delay, so a clean
hand-over is not slowed down. docs/locks.md walks through every invalidation path.

Member record: bound to a second session of ours, like the first but with no
lock-delay, renewed with it. The lock-delay guards the lock key only: on the member
key it would hide this node's record (and its GTID position) from the others for
``ttl - margin`` after its session ended early, and a failover in that window could
not see that this node holds more than the racing candidate.

Fencing token: the ``ModifyIndex`` of the acquiring write. Consul's ``LockIndex``
(also exposed) restarts at 1 when the key is deleted and recreated - which
``Behavior=delete`` does on every invalidation - whereas Raft indexes only grow,
so the acquiring write's ModifyIndex is strictly increasing across holders.
The holder never rewrites the key while holding it, so the token stays constant
for the whole term.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import consul.base

from dbfence.locks.base import (
    LeaseGrant,
    LeaseLock,
    LockSettings,
    deadline_in,
    make_grant,
)
from dbfence.locks.consul_http import ConsulOptions, call_within, consul_index, make_client, read_entry
from dbfence.locks.consul_kv import lock_state, snapshot_of
from dbfence.locks.consul_records import ConsulRecords
from dbfence.locks.consul_session import MAX_LOCK_DELAY, create_session, effective_lock_delay, session_body
from dbfence.locks.errors import (
    BadData,
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
    MemberRecord,
    encode,
)

T = TypeVar("T")


class ConsulLeaseLock(LeaseLock):
    """The Consul implementation of :class:`~dbfence.locks.base.LeaseLock`."""

    def __init__(self, options: ConsulOptions, cluster: str, node: str, settings: LockSettings) -> None:
        if not 10 <= settings.ttl <= 86400:
            raise ValueError(f"Consul session TTL must be 10..86400 seconds, got {settings.ttl}")
        self.lock_delay = effective_lock_delay(settings)
        self.keys = ClusterKeys(cluster)
        self.keys.member(node)  # validates the node name
        self.node = node
        self.settings = settings
        self.options = options
        self.endpoint = options.address
        self._consul = make_client(options, settings.call_timeout)
        # Blocking queries use their own connection pool, so they never queue a renew.
        self._watch_consul = make_client(options, settings.call_timeout)
        self.records = ConsulRecords(self._consul, self.keys, settings.call_timeout, self.endpoint)
        self._state = threading.Lock()
        self._session: str | None = None
        self._member_session: str | None = None  # binds members/<node>; see the module docstring
        self._token: int | None = None

    @property
    def kind(self) -> str:
        return "consul"

    @property
    def session_id(self) -> str | None:
        with self._state:
            return self._session

    @property
    def member_session_id(self) -> str | None:
        """The session our member record is bound to (Consul only: not the lock's session)."""
        with self._state:
            return self._member_session

    # ------------------------------------------------------------------ plumbing

    def _call(self, what: str, deadline: float, fn: Callable[[], T]) -> T:
        """Run one python-consul2 call within ``deadline``, translating every failure."""
        return call_within(what, deadline, fn, self.endpoint)

    def _get(self, key: str, deadline: float, what: str) -> dict[str, Any] | None:
        return read_entry(self._consul, key, deadline, what, self.endpoint)

    def _forget_session(self, session: str) -> None:
        with self._state:
            if self._session == session:
                self._session = None
                self._token = None

    def _forget_member_session(self, session: str) -> None:
        with self._state:
            if self._member_session == session:
                self._member_session = None

    def _require_session(self) -> str:
        with self._state:
            if self._session is None:
                raise SessionExpired("no session is open (call open_session)")
            return self._session

    def _renew_session(self, session: str, deadline: float) -> None:
        try:
            self._call("session renew", deadline, lambda: self._consul.session.renew(session))
        except consul.base.NotFound:
            self._forget_session(session)
            raise SessionExpired(f"session {session} no longer exists") from None
        except SessionExpired:
            self._forget_session(session)
            raise

    def _lock_state(self, entry: dict[str, Any], strict: bool, problems: list[BadData]) -> LockState:
        return lock_state(self.keys, entry, strict, problems)

    # ------------------------------------------------------------------ session

    def open_session(self) -> LeaseGrant:
        with self._state:
            open_already = self._session is not None
        if open_already:
            try:
                return self.renew()
            except SessionExpired:
                pass  # it expired behind our back: open a new one below
        sent_at = time.monotonic()
        session = self._call("session create", sent_at + self.settings.call_timeout, self._create_session)
        if not isinstance(session, str) or not session:
            raise DcsUnreachable(f"session create: unexpected answer {session!r:.80}", self.endpoint)
        with self._state:
            self._session = session
            self._token = None
        return make_grant(session, self.settings.ttl, sent_at, self.settings.margin, None)

    def _create_session(self, member: bool = False) -> Any:
        body = session_body(self.keys.cluster, self.node, self.settings.ttl, self.lock_delay, member=member)
        return create_session(self._consul, self.options.datacenter, body)

    def renew(self) -> LeaseGrant:
        session = self._require_session()
        sent_at = time.monotonic()
        deadline = sent_at + self.settings.call_timeout
        self._renew_session(session, deadline)
        entry = self._get(self.keys.leader, deadline, "read lock")
        ours = entry is not None and entry.get("Session") == session
        with self._state:
            held_before = self._token is not None and self._session == session
            if ours and entry is not None and self._token is None:
                # An acquire whose answer we lost: adopt it.
                self._token = int(entry.get("ModifyIndex", 0))
            if not ours:
                self._token = None
            token = self._token
        if held_before and not ours:
            raise LockLost(f"{self.keys.leader} is no longer held by session {session}")
        self._renew_member_session(deadline)
        return make_grant(session, self.settings.ttl, sent_at, self.settings.margin, token)

    def _renew_member_session(self, deadline: float) -> None:
        with self._state:
            member = self._member_session
        if member is None:
            return
        try:
            self._call("member session renew", deadline, lambda: self._consul.session.renew(member))
        except (consul.base.NotFound, SessionExpired):
            # Gone, and our record with it: the next publish_member opens a new one.
            self._forget_member_session(member)

    def close_session(self) -> None:
        with self._state:
            session, member = self._session, self._member_session
        if session is None and member is None:
            return
        deadline = deadline_in(self.settings.call_timeout)
        try:
            # Release first: a released key gets no lock-delay, a destroyed session's keys do.
            self.release()
            if member is not None:
                member_key = self.keys.member(self.node)
                entry = self._get(member_key, deadline, "read own member record")
                if entry is not None and entry.get("Session") == member:
                    self._call("delete member record", deadline, lambda: self._consul.kv.delete(member_key))
                self._call("member session destroy", deadline, lambda: self._consul.session.destroy(member))
            if session is not None:
                self._call("session destroy", deadline, lambda: self._consul.session.destroy(session))
        except SessionExpired:
            pass  # already gone, and its keys with it
        if session is not None:
            self._forget_session(session)
        if member is not None:
            self._forget_member_session(member)

    # ------------------------------------------------------------------ the lock

    def try_acquire(self, holder: HolderInfo) -> LeaseGrant:
        self._check_own_node("holder", holder.node)
        with self._state:
            session = self._session
        if session is None:
            grant = self.open_session()
            session = self._require_session()
            sent_at = grant.sent_at
        else:
            sent_at = time.monotonic()
            self._renew_session(session, sent_at + self.settings.call_timeout)
        deadline = sent_at + self.settings.call_timeout
        key = self.keys.leader
        entry = self._get(key, deadline, "read lock")
        if entry is None or entry.get("Session") != session:
            if entry is not None and entry.get("Session"):
                raise self._conflict(entry)
            try:
                acquired = self._call(
                    "acquire", deadline, lambda: self._consul.kv.put(key, encode(holder), acquire=session)
                )
            except SessionExpired:
                self._forget_session(session)
                raise
            entry = self._get(key, deadline, "read lock after acquire")
            if acquired is not True or entry is None or entry.get("Session") != session:
                if entry is not None and entry.get("Session") and entry.get("Session") != session:
                    raise self._conflict(entry)
                raise LockConflict(
                    key, "Consul refused the acquire (lock-delay after an invalidated session)"
                )
        token = int(entry.get("ModifyIndex", 0))
        with self._state:
            if self._session == session:
                if self._token is None:
                    self._token = token
                token = self._token
        return make_grant(session, self.settings.ttl, sent_at, self.settings.margin, token)

    def _conflict(self, entry: dict[str, Any]) -> LockConflict:
        state = self._lock_state(entry, False, [])
        who = state.holder.describe() if state.holder else f"session {state.session_id}"
        return LockConflict(
            self.keys.leader, f"held by {who} (token {state.token})", holder=who, token=state.token
        )

    def release(self) -> None:
        with self._state:
            session = self._session
        if session is None:
            return
        key = self.keys.leader
        # ?release only acts if OUR session holds the key; the empty value marks it free.
        deadline = deadline_in(self.settings.call_timeout)
        self._call("release", deadline, lambda: self._consul.kv.put(key, b"", release=session))
        with self._state:
            if self._session == session:
                self._token = None

    def force_delete_lock(self, expected_token: int | None = None) -> LockState | None:
        deadline = deadline_in(self.settings.call_timeout)
        key = self.keys.leader
        entry = self._get(key, deadline, "read lock")
        if entry is None:
            if expected_token is not None:
                raise LockConflict(key, f"expected token {expected_token}, found no lock; nothing deleted")
            return None
        state = self._lock_state(entry, False, [])
        if expected_token is not None and state.token != expected_token:
            raise LockConflict(
                key, f"expected token {expected_token}, found token {state.token}; nothing deleted"
            )
        deleted = self._call(
            "force delete", deadline, lambda: self._consul.kv.delete(key, cas=state.modify_index)
        )
        if deleted is not True:
            raise LockConflict(key, "the lock changed while deleting it; nothing deleted")
        return state if state.session_id else None

    # ------------------------------------------------------------------ members and reads

    def publish_member(self, record: MemberRecord) -> None:
        self._check_own_node("member record", record.node)
        with self._state:
            open_already = self._session is not None
        if not open_already:
            self.open_session()  # the contract: publishing opens our lease; renew() keeps both alive
        deadline = deadline_in(self.settings.call_timeout)
        key = self.keys.member(self.node)
        session = self._open_member_session(deadline)
        try:
            stored = self._call(
                "publish member", deadline, lambda: self._consul.kv.put(key, encode(record), acquire=session)
            )
        except SessionExpired:
            # The member session ended behind our back (and the record with it): open another, once.
            self._forget_member_session(session)
            session = self._open_member_session(deadline)
            try:
                stored = self._call(
                    "publish member", deadline,
                    lambda: self._consul.kv.put(key, encode(record), acquire=session),
                )
            except SessionExpired:
                self._forget_member_session(session)
                raise
        if stored is not True:
            entry = self._get(key, deadline, "read member record")
            other = entry.get("Session") if entry else None
            if other and other != session:
                raise LockConflict(key, f"held by another session {other} (two agents named {self.node}?)")
            raise LockConflict(key, "Consul refused the write (lock-delay after an invalidated session)")

    def _open_member_session(self, deadline: float) -> str:
        with self._state:
            member = self._member_session
        if member is not None:
            return member
        created = self._call("member session create", deadline, lambda: self._create_session(member=True))
        if not isinstance(created, str) or not created:
            raise DcsUnreachable(f"session create: unexpected answer {created!r:.80}", self.endpoint)
        with self._state:
            if self._member_session is None:
                self._member_session = created
                return created
            member = self._member_session
        # Another thread opened one meanwhile: keep theirs, drop ours.
        self._call("member session destroy", deadline, lambda: self._consul.session.destroy(created))
        return member

    def _read_prefix(self, deadline: float) -> tuple[int, list[dict[str, Any]]]:
        index, entries = self._call(
            "snapshot", deadline, lambda: self._consul.kv.get(self.keys.prefix, recurse=True)
        )
        return consul_index(index), list(entries or [])

    def snapshot(self, strict: bool = True, *, lease_ttl: bool = True) -> ClusterSnapshot:
        index, entries = self._read_prefix(deadline_in(self.settings.call_timeout))
        return snapshot_of(self.keys, index, entries, strict)

    def wait_for_change(self, after_index: int, timeout: float) -> int:
        wait_ms = max(1, int(timeout * 1000))
        # Consul adds up to wait/16 of jitter to a blocking query.
        deadline = time.monotonic() + timeout + timeout / 16 + self.settings.call_timeout
        index, _ = self._call(
            "blocking query",
            deadline,
            lambda: self._watch_consul.kv.get(
                self.keys.prefix, recurse=True, index=after_index, wait=f"{wait_ms}ms"
            ),
        )
        new_index = consul_index(index)
        if new_index == after_index:
            return after_index
        # Consul documents that an index may go backwards (state reset): report a change.
        return new_index if new_index > after_index else after_index + 1

    # ------------------------------------------------------------------ failsafe list, intent, history

    def write_failsafe_list(self, listing: FailsafeList) -> None:
        # Consul's KV has no put conditional on another key: check, then write. A deposed holder
        # could only overwrite a newer list in that moment, which its successor sees (another
        # token) and rewrites before it relies on the failsafe.
        deadline = deadline_in(self.settings.call_timeout)
        entry = self._get(self.keys.leader, deadline, "read lock")
        with self._state:
            ours = (entry is not None and self._session is not None and entry.get("Session") == self._session
                    and self._token == listing.token)
        if not ours:
            raise LockLost(f"{self.keys.leader} is not held by us with token {listing.token}")
        self.records.put_failsafe_list(listing, deadline)

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
        for client in (self._consul, self._watch_consul):
            session = getattr(client.http, "session", None)
            if session is not None:
                session.close()


def consul_lock(
    address: str, cluster: str, node: str, settings: LockSettings | None = None, **options: Any
) -> ConsulLeaseLock:
    """Shorthand: ``consul_lock("127.0.0.1:8500", "prod", "db1")``."""
    return ConsulLeaseLock(
        ConsulOptions(address=address, **options), cluster, node, settings or LockSettings()
    )


__all__ = [
    "MAX_LOCK_DELAY",
    "ConsulLeaseLock",
    "ConsulOptions",
    "LockError",
    "consul_lock",
    "effective_lock_delay",
]

"""Consul backend: a TTL session, and the lock key taken with ``PUT ?acquire=<session>``.

Client library: python-consul2 (module ``consul``). Its HTTP client has one fixed
timeout; we give it a per-call budget instead (see :class:`_BudgetedHTTPClient`),
so a renew made of two requests still ends within ``call_timeout``.

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

import json
import math
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import consul
import consul.base
import consul.std
import requests

from dbfence.locks.base import (
    LeaseGrant,
    LeaseLock,
    LockSettings,
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
_MIN_ATTEMPT = 0.05
_BUDGET = threading.local()
# structs.MaxLockDelay: Consul silently caps a session's lock-delay at 60 s.
MAX_LOCK_DELAY = 60.0


def effective_lock_delay(settings: LockSettings) -> float:
    """The lock-delay sent to Consul: at least ``ttl - margin``, so that no rival acquires the keys of
    an invalidated session before the holder's gate deadline (last renewal send time + ttl - margin).

    ``settings.lock_delay`` only raises it. Raises ``ValueError`` when it would exceed Consul's 60 s cap.
    """
    delay = max(float(settings.lock_delay), settings.ttl - settings.margin)
    if delay > MAX_LOCK_DELAY:
        raise ValueError(
            f"Consul caps lock-delay at {MAX_LOCK_DELAY:g} s, but ttl - margin = "
            f"{settings.ttl - settings.margin:g} s (lock_delay {settings.lock_delay}) needs "
            f"{delay:g} s to keep a rival out until the holder's gate closes: lower ttl or raise margin"
        )
    return delay


class _BudgetedHTTPClient(consul.std.HTTPClient):  # type: ignore[misc,unused-ignore]
    """python-consul2's requests-based client, with the timeout taken from the caller's budget.

    ``requests`` applies the timeout to the connection and to each read; our answers are
    small, so this bounds the whole request in practice.
    """

    @property
    def timeout(self) -> float:
        deadline: float | None = getattr(_BUDGET, "deadline", None)
        if deadline is None:
            return self._default_timeout
        return max(_MIN_ATTEMPT, deadline - time.monotonic())

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._default_timeout = value


@contextmanager
def _budget(deadline: float) -> Iterator[None]:
    previous = getattr(_BUDGET, "deadline", None)
    _BUDGET.deadline = deadline
    try:
        yield
    finally:
        _BUDGET.deadline = previous


@dataclass(frozen=True)
class ConsulOptions:
    """How to reach the Consul agent.

    ``address``: ``host:port``, ``http://host:port`` or ``https://host:port``.
    ``token``: ACL token (default: ``CONSUL_HTTP_TOKEN`` from the environment).
    ``ca_cert``: CA bundle to verify an https agent; ``cert``/``key``: client certificate.
    """

    address: str
    token: str | None = None
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None
    datacenter: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both cert and key")


def _client(options: ConsulOptions, default_timeout: float) -> Any:
    parts = urlsplit(options.address if "://" in options.address else f"http://{options.address}")
    if not parts.hostname or not parts.port:
        raise ValueError(f"Consul address {options.address!r} must name a host and a port")
    verify: bool | str = options.ca_cert if options.ca_cert else True
    cert = (options.cert, options.key) if options.cert and options.key else None
    with warnings.catch_warnings():
        # python-consul2 warns about deprecated Consul APIs we never call, on every construction.
        warnings.simplefilter("ignore", DeprecationWarning)
        client = consul.Consul(
            host=parts.hostname,
            port=parts.port,
            scheme=parts.scheme,
            verify=verify,
            cert=cert,
            dc=options.datacenter,
        )
    # python-consul2 lets CONSUL_HTTP_ADDR override the address we were given: an
    # explicit address must win, so build the HTTP client ourselves.
    client.http = _BudgetedHTTPClient(parts.hostname, parts.port, parts.scheme, verify, cert, default_timeout)
    if options.token:
        client.token = options.token
    return client


def _looks_like_bad_session(text: str) -> bool:
    lowered = text.lower()
    return "session" in lowered and ("invalid" in lowered or "not found" in lowered or "unknown" in lowered)


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
        self._consul = _client(options, settings.call_timeout)
        # Blocking queries use their own connection pool, so they never queue a renew.
        self._watch_consul = _client(options, settings.call_timeout)
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
        if deadline - time.monotonic() < _MIN_ATTEMPT:
            raise DcsUnreachable(f"{what}: no time left in the call budget", self.endpoint)
        try:
            with _budget(deadline):
                return fn()
        except requests.exceptions.RequestException as exc:
            raise DcsUnreachable(f"{what}: {exc.__class__.__name__}: {exc}", self.endpoint) from None
        except (consul.base.ACLPermissionDenied, consul.base.ACLDisabled) as exc:
            raise DcsAccessDenied(f"{what}: {exc}") from None
        except consul.base.NotFound:
            raise  # only session renew asks for 404 as an exception: it handles it
        except consul.base.ConsulException as exc:
            if _looks_like_bad_session(str(exc)):
                raise SessionExpired(f"{what}: Consul says {exc}") from None
            raise DcsUnreachable(f"{what}: {exc}", self.endpoint) from None
        except ValueError as exc:  # a proxy answering HTML, truncated JSON...
            raise DcsUnreachable(f"{what}: unreadable answer: {exc}", self.endpoint) from None

    def _deadline(self) -> float:
        return time.monotonic() + self.settings.call_timeout

    def _get(self, key: str, deadline: float, what: str) -> dict[str, Any] | None:
        _, entry = self._call(what, deadline, lambda: self._consul.kv.get(key))
        if entry is not None and not isinstance(entry, dict):
            raise DcsUnreachable(f"{what}: unexpected answer {entry!r:.80}", self.endpoint)
        return entry

    def _delete(self, key: str, deadline: float, what: str) -> None:
        self._call(what, deadline, lambda: self._consul.kv.delete(key))

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
        holder: HolderInfo | None
        try:
            holder = parse_holder(self.keys.leader, entry.get("Value"))
        except BadData as error:
            snapshot_problem(strict, problems, error)
            holder = None
        return LockState(
            key=self.keys.leader,
            holder=holder,
            token=int(entry.get("ModifyIndex", 0)),
            session_id=str(entry.get("Session") or ""),
            ttl_left=None,
            lock_index=int(entry.get("LockIndex", 0)),
            modify_index=int(entry.get("ModifyIndex", 0)),
        )

    def _held_lock(
        self, entry: dict[str, Any] | None, strict: bool, problems: list[BadData]
    ) -> LockState | None:
        """The lock state, or ``None`` when the key is absent or not held by any session."""
        if entry is None:
            return None
        if entry.get("Session"):
            return self._lock_state(entry, strict, problems)
        value = entry.get("Value")
        if value:
            # Released keys keep the last holder's JSON: it must still parse.
            try:
                parse_holder(self.keys.leader, value)
            except BadData as error:
                snapshot_problem(strict, problems, error)
        return None

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

    def _session_body(self, *, member: bool = False) -> dict[str, Any]:
        # python-consul2's session.create can send ``checks`` but not NodeChecks/ServiceChecks, and
        # formats the lock-delay in whole seconds: send the body ourselves. An empty ``Checks`` stops
        # Consul binding the session to serfHealth (every version: Consul >= 1.7 then empties its
        # NodeChecks default too); the empty NodeChecks and ServiceChecks say so explicitly.
        lock_delay = 0.0 if member else self.lock_delay
        return {
            "Name": f"dbfence-{self.keys.cluster}-{self.node}" + ("-member" if member else ""),
            "Behavior": "delete",
            "TTL": f"{self.settings.ttl}s",
            "LockDelay": f"{math.ceil(lock_delay * 1000)}ms",
            "Checks": [],
            "NodeChecks": [],
            "ServiceChecks": [],
        }

    def _create_session(self, member: bool = False) -> Any:
        params = [("dc", self.options.datacenter)] if self.options.datacenter else []
        token = self._consul.token
        headers = {"X-Consul-Token": token} if token else {}
        return self._consul.http.put(
            consul.base.CB.json(is_id=True),
            path="/v1/session/create",
            params=params,
            headers=headers,
            data=json.dumps(self._session_body(member=member)),
        )

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
        deadline = self._deadline()
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
        self._call("release", self._deadline(), lambda: self._consul.kv.put(key, b"", release=session))
        with self._state:
            if self._session == session:
                self._token = None

    def force_delete_lock(self, expected_token: int | None = None) -> LockState | None:
        deadline = self._deadline()
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
        deadline = self._deadline()
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
        return _index(index), list(entries or [])

    def snapshot(self, strict: bool = True, *, lease_ttl: bool = True) -> ClusterSnapshot:
        index, entries = self._read_prefix(self._deadline())
        problems: list[BadData] = []
        by_key = {str(entry.get("Key")): entry for entry in entries if isinstance(entry, dict)}
        lock = self._held_lock(by_key.get(self.keys.leader), strict, problems)
        members = []
        for key, entry in sorted(by_key.items()):
            if not key.startswith(self.keys.members_prefix):
                continue
            try:
                record = parse_member(key, entry.get("Value"), self.keys.node_of_member_key(key))
            except BadData as error:
                snapshot_problem(strict, problems, error)
                continue
            members.append(MemberEntry(key=key, record=record, session_id=str(entry.get("Session") or "")))
        intent = Intent()
        if self.keys.intent in by_key:
            try:
                intent = parse_intent(self.keys.intent, by_key[self.keys.intent].get("Value"))
            except BadData as error:
                snapshot_problem(strict, problems, error)
        failsafe = None
        if self.keys.failsafe in by_key:
            try:
                failsafe = parse_failsafe_list(self.keys.failsafe, by_key[self.keys.failsafe].get("Value"))
            except BadData as error:
                snapshot_problem(strict, problems, error)
        return ClusterSnapshot(
            cluster=self.keys.cluster,
            index=index,
            lock=lock,
            members=tuple(members),
            intent=intent,
            problems=tuple(problems),
            failsafe=failsafe,
        )

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
        new_index = _index(index)
        if new_index == after_index:
            return after_index
        # Consul documents that an index may go backwards (state reset): report a change.
        return new_index if new_index > after_index else after_index + 1

    def write_failsafe_list(self, listing: FailsafeList) -> None:
        # Consul's KV has no put conditional on another key: check, then write. A deposed holder
        # could only overwrite a newer list in that moment, which its successor sees (another
        # token) and rewrites before it relies on the failsafe.
        deadline = self._deadline()
        entry = self._get(self.keys.leader, deadline, "read lock")
        with self._state:
            ours = (entry is not None and self._session is not None and entry.get("Session") == self._session
                    and self._token == listing.token)
        if not ours:
            raise LockLost(f"{self.keys.leader} is not held by us with token {listing.token}")
        self._call("write failsafe list", deadline,
                   lambda: self._consul.kv.put(self.keys.failsafe, encode(listing)))

    def read_intent(self) -> Intent:
        entry = self._get(self.keys.intent, self._deadline(), "read intent")
        return parse_intent(self.keys.intent, entry.get("Value")) if entry else Intent()

    def write_intent(self, intent: Intent) -> None:
        self._call(
            "write intent", self._deadline(), lambda: self._consul.kv.put(self.keys.intent, encode(intent))
        )

    def append_history(self, entry: HistoryEntry, keep: int = 100) -> None:
        deadline = self._deadline()
        key = self.keys.history_entry(history_id(entry))
        self._call("append history", deadline, lambda: self._consul.kv.put(key, encode(entry)))
        _, keys = self._call(
            "list history", deadline, lambda: self._consul.kv.get(self.keys.history_prefix, keys=True)
        )
        stale = sorted(keys or [])[:-keep] if keep > 0 else sorted(keys or [])
        for old in stale:
            self._delete(str(old), deadline, "trim history")

    def read_history(self, limit: int = 50) -> tuple[HistoryEntry, ...]:
        _, entries = self._call(
            "read history",
            self._deadline(),
            lambda: self._consul.kv.get(self.keys.history_prefix, recurse=True),
        )
        newest = sorted((e for e in entries or [] if isinstance(e, dict)), key=lambda e: str(e.get("Key")))[
            -limit:
        ]
        return tuple(parse_history(str(e.get("Key")), e.get("Value")) for e in newest)

    def close(self) -> None:
        for client in (self._consul, self._watch_consul):
            session = getattr(client.http, "session", None)
            if session is not None:
                session.close()


def _index(raw: object) -> int:
    try:
        return int(str(raw))
    except ValueError:
        raise DcsUnreachable(f"Consul answered without a usable X-Consul-Index ({raw!r:.40})") from None


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

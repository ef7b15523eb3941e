"""The lease-lock interface every DCS backend implements.

One agent owns one :class:`LeaseLock` object. The object holds at most one
lease (etcd) / session (Consul) and remembers whether that lease holds the
cluster's lock. Methods are safe to call from several threads (a renew thread and
a watch thread, say); each one is a short sequence of DCS requests whose total
time is bounded by ``settings.call_timeout`` (``wait_for_change`` by its own
``timeout`` plus ``call_timeout``).

Deadlines. Each successful ``open_session``, ``renew`` and ``try_acquire``
returns a :class:`LeaseGrant` whose ``deadline`` is::

    monotonic time taken just BEFORE the refreshing request was sent
    + the lease TTL - settings.margin

The server starts its own TTL countdown only after it receives the request, so
the server-side expiry is always later than ``deadline + margin``; the margin
covers clock-rate differences and the time the gate needs to close. A failed
call never produces a grant, so the deadline of the last success stays in force
and simply runs out: nothing is ever extended by a failure. Because every call
gives up after ``call_timeout < margin``, a caller always learns about a failed
renewal before its deadline passes (unless it stopped calling).

Consul may invalidate a session only after up to 2 x TTL and then applies its
lock-delay; dbfence's own deadline still uses 1 x TTL, so the holder always stops
first.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

from dbfence.locks.errors import BadData, LockConflict
from dbfence.locks.model import (
    ClusterKeys,
    ClusterSnapshot,
    FailsafeList,
    HistoryEntry,
    HolderInfo,
    Intent,
    LockState,
    MemberRecord,
    parse_failsafe_list,
    parse_holder,
    parse_intent,
)


@dataclass(frozen=True)
class LockSettings:
    """Timing of the lease.

    ``ttl`` is the lease/session TTL in whole seconds (Consul requires 10..86400).
    ``margin`` is subtracted from every deadline; ``call_timeout`` bounds every DCS
    call and must be smaller than the margin it protects.
    ``lock_delay`` is Consul's lock-delay in whole seconds (ignored by etcd).
    """

    ttl: int = 10
    margin: float = 3.0
    call_timeout: float = 2.0
    lock_delay: int = 1

    def __post_init__(self) -> None:
        if self.ttl < 1:
            raise ValueError(f"ttl must be at least 1 second, got {self.ttl}")
        if not 0 < self.call_timeout < self.margin < self.ttl:
            raise ValueError(
                "settings must satisfy 0 < call_timeout < margin < ttl, got "
                f"call_timeout={self.call_timeout} margin={self.margin} ttl={self.ttl}"
            )
        if self.lock_delay < 0:
            raise ValueError(f"lock_delay must be >= 0, got {self.lock_delay}")

    @property
    def renew_interval(self) -> float:
        """A renewal period that leaves room for two failed attempts before the deadline."""
        return max(0.1, (self.ttl - self.margin) / 3)


@dataclass(frozen=True)
class LeaseGrant:
    """Result of a successful open/renew/acquire.

    ``deadline`` and ``sent_at`` are ``time.monotonic()`` values of this process.
    ``token`` is the fencing token of the lock when this lease holds it, else ``None``.
    """

    session_id: str
    ttl: float
    sent_at: float
    deadline: float
    token: int | None = None

    @property
    def holds_lock(self) -> bool:
        return self.token is not None

    def time_left(self, now: float) -> float:
        return self.deadline - now


def make_grant(session_id: str, ttl: float, sent_at: float, margin: float, token: int | None) -> LeaseGrant:
    return LeaseGrant(
        session_id=session_id, ttl=ttl, sent_at=sent_at, deadline=sent_at + ttl - margin, token=token
    )


def conflict_from(state: LockState) -> LockConflict:
    holder = state.holder.describe() if state.holder else "an unreadable value"
    return LockConflict(
        state.key, f"held by {holder} (token {state.token})", holder=holder, token=state.token
    )


def failsafe_relied_on(state: LockState) -> LockConflict:
    """Why a delete of the failsafe list is refused while ``state``'s holder holds the lock."""
    who = state.holder.describe() if state.holder else "an unreadable holder"
    return LockConflict(state.key, f"held by {who} (token {state.token}), which relies on the failsafe list; "
                        "nothing deleted", state.holder.node if state.holder else None, state.token)


def deadline_in(call_timeout: float) -> float:
    """The deadline of one call (or one method's calls) that starts now and may take ``call_timeout``."""
    return time.monotonic() + call_timeout


def history_id(entry: HistoryEntry) -> str:
    """Key suffix of a history entry: sorts by time, unique enough per node."""
    micros = max(0, math.floor(entry.at * 1_000_000))
    return f"{micros:020d}-{entry.node or 'cluster'}-{entry.kind}"


class LeaseLock(abc.ABC):
    """One agent's handle on the cluster lock and member records in a DCS.

    Errors (all from :mod:`dbfence.locks.errors`): ``DcsUnreachable`` (timeout,
    connection failure, no quorum: outcome unknown, retry), ``DcsAccessDenied``
    (credentials refused), ``LockLost`` / ``SessionExpired`` (what we held is gone),
    ``LockConflict`` (someone else holds it), ``BadData`` (unparseable key, named).
    ``ValueError`` only for programming errors (bad names, bad arguments).
    """

    keys: ClusterKeys
    node: str
    settings: LockSettings

    @property
    @abc.abstractmethod
    def kind(self) -> str:
        """``"etcd"`` or ``"consul"``."""

    @property
    @abc.abstractmethod
    def session_id(self) -> str | None:
        """Id of our open lease/session, or ``None``."""

    @abc.abstractmethod
    def open_session(self) -> LeaseGrant:
        """Create our lease (etcd LeaseGrant) / session (Consul TTL session), if not open yet.

        Idempotent: with a session already open it behaves like :meth:`renew`.
        Raises DcsUnreachable, DcsAccessDenied. The returned grant has ``token=None``.
        """

    @abc.abstractmethod
    def renew(self) -> LeaseGrant:
        """Refresh our lease/session and report whether it still holds the lock.

        One keep-alive then one read of the lock key, within ``call_timeout``. The
        deadline comes from the keep-alive's send time. ``token`` is set when the lock
        key is bound to our lease (also after an acquire whose answer was lost).
        Raises SessionExpired (lease gone: lock and member record gone with it),
        LockLost (we held the lock and the key is no longer ours: the session stays
        open), DcsUnreachable (previous deadline stays in force), DcsAccessDenied.
        """

    @abc.abstractmethod
    def try_acquire(self, holder: HolderInfo) -> LeaseGrant:
        """Atomically take the lock if nobody holds it, binding it to our lease.

        Refreshes the lease first (so the deadline is fresh), then one atomic
        create-if-absent: etcd txn ``create_revision(key) == 0`` -> put with lease;
        Consul ``PUT ?acquire=<session>``. Idempotent: if the key is already bound to
        our lease it returns the existing grant without rewriting. Opens a session
        when none is open. Returns a grant with ``token`` set.
        Raises LockConflict (held by another, or Consul lock-delay), SessionExpired,
        DcsUnreachable (outcome unknown: the next renew or try_acquire tells),
        DcsAccessDenied.
        """

    @abc.abstractmethod
    def release(self) -> None:
        """Voluntarily give up the lock, if our lease holds it (no lock-delay applies).

        Atomic compare-and-delete (etcd: key's lease == ours; Consul: ``?release``).
        Postcondition on return: our lease does not hold the lock. Our member record
        and session stay. Raises DcsUnreachable (the lease TTL will release it anyway).
        """

    @abc.abstractmethod
    def close_session(self) -> None:
        """Release the lock if held, remove our member record, end our lease/session.

        Best-effort and idempotent; raises DcsUnreachable if the DCS cannot be told
        (everything then expires with the TTL).
        """

    def leave(self) -> None:
        """Stop using the DCS for good (an agent stopping): release the lock at once, but leave
        our lease/session and the member record bound to it to expire by themselves (one TTL).

        Peers racing meanwhile still see what this node holds: when every agent restarts at once,
        the fastest would otherwise race before the others' records are back, and could take the
        lock holding less than a peer that acknowledged more. A restarted agent writes over its
        old record with its new lease. This default closes the session (for a backend whose
        restarted agent could not write over a record its old session still holds). Raises
        DcsUnreachable if the DCS cannot be told (everything then expires with the TTL).
        """
        self.close_session()

    @abc.abstractmethod
    def publish_member(self, record: MemberRecord) -> None:
        """Write our member record under ``members/<node>``, bound to our lease/session.

        ``record.node`` must be our node. Opens a session when none is open. The record
        vanishes when the lease/session expires. Raises SessionExpired, LockConflict
        (Consul: the key is held by another session or still in lock-delay),
        DcsUnreachable, DcsAccessDenied.
        """

    @abc.abstractmethod
    def snapshot(self, strict: bool = True, *, lease_ttl: bool = True) -> ClusterSnapshot:
        """Read the lock, every member record and the intent at one DCS index.

        ``lease_ttl=False`` skips reading the lock's remaining TTL (``lock.ttl_left`` is then
        None): it is for display, and costs etcd a second request on every read.

        Strict (the agent): any unparseable key raises BadData naming it. Lenient (the
        CLI): unparseable member/intent keys are skipped and listed in ``problems``; an
        unparseable lock key gives ``lock.holder = None``. Raises DcsUnreachable,
        DcsAccessDenied, BadData.
        """

    @abc.abstractmethod
    def wait_for_change(self, after_index: int, timeout: float) -> int:
        """Block until something under the cluster prefix changes after ``after_index``.

        Uses an etcd watch / Consul blocking query, so a released lock is noticed within
        milliseconds. Returns an index greater than ``after_index`` on a change (then
        take a new snapshot), or ``after_index`` itself when ``timeout`` seconds passed
        without a change. Total time is bounded by ``timeout + call_timeout``.
        Raises DcsUnreachable, DcsAccessDenied.
        """

    @abc.abstractmethod
    def force_delete_lock(self, expected_token: int | None = None) -> LockState | None:
        """Operator action: delete the lock key whoever holds it.

        With ``expected_token`` the delete is atomic against that token and raises
        LockConflict if the key has changed. Returns the deleted lock (``None`` if the
        lock was free). The previous holder learns it on its next renew (LockLost): an
        operator should only do this when the holder is known dead or fenced.
        Raises DcsUnreachable, DcsAccessDenied.
        """

    @abc.abstractmethod
    def write_failsafe_list(self, listing: FailsafeList) -> None:
        """Write the failsafe member list, only while we hold the lock with ``listing.token``
        (raises LockLost otherwise). Not leased: it must outlive the writer's lease."""

    @abc.abstractmethod
    def delete_failsafe_list(self, *, while_held: bool = False) -> bytes | None:
        """Operator action: delete the failsafe member list (a stale one names nodes that are
        gone, and a node not in it never races; docs/failsafe.md).

        Deletes exactly the value it read (LockConflict if the list changed meanwhile) and,
        unless ``while_held``, only while nobody holds the lock (LockConflict naming the holder
        otherwise: a live holder relies on the list). Returns the deleted value, as stored
        (``None``: there was no list). Raises DcsUnreachable, DcsAccessDenied.
        """

    @abc.abstractmethod
    def drop_failsafe_members(self, nodes: frozenset[str]) -> tuple[FailsafeList, FailsafeList] | None:
        """Operator action: take ``nodes`` (gone for good) out of the failsafe member list, which
        otherwise only grows. Always safe: a node not listed never races, and a primary asks at
        least the members it listed. Rewrites exactly the list it read (LockConflict if it
        changed meanwhile; BadData if it cannot be read). Returns (before, after), ``None`` when
        there is no list. Raises DcsUnreachable, DcsAccessDenied.
        """

    @abc.abstractmethod
    def read_intent(self) -> Intent:
        """The operator intent (``Intent()`` when the key is absent). Raises BadData etc."""

    @abc.abstractmethod
    def write_intent(self, intent: Intent) -> None:
        """Replace the operator intent (not leased: survives agents)."""

    @abc.abstractmethod
    def append_history(self, entry: HistoryEntry, keep: int = 100) -> None:
        """Add a history entry and trim the history to the ``keep`` newest entries."""

    @abc.abstractmethod
    def read_history(self, limit: int = 50) -> tuple[HistoryEntry, ...]:
        """The newest ``limit`` history entries, oldest first. Raises BadData on garbage."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close network resources. Does NOT end the session (use ``close_session``)."""

    def _check_own_node(self, what: str, node: str) -> None:
        if node != self.node:
            raise ValueError(f"{what} names node {node!r} but this lock belongs to {self.node!r}")


def snapshot_problem(strict: bool, problems: list[BadData], error: BadData) -> None:
    """Strict reads raise the first problem; lenient reads collect it."""
    if strict:
        raise error
    problems.append(error)


def lock_holder(keys: ClusterKeys, value: bytes | str | None, strict: bool,
                problems: list[BadData]) -> HolderInfo | None:
    """The holder the lock key's value names; a bad value is a problem of the read (see
    :func:`snapshot_problem`) and no holder."""
    try:
        return parse_holder(keys.leader, value)
    except BadData as error:
        snapshot_problem(strict, problems, error)
        return None


def intent_and_failsafe(
    keys: ClusterKeys, values: Mapping[str, bytes | str | None], strict: bool, problems: list[BadData]
) -> tuple[Intent, FailsafeList | None]:
    """A snapshot's two optional keys, from ``values`` (the stored value of each key present, by
    key name): the operator's intent (absent: none) and the failsafe list (absent: none). A bad
    one is a problem of the snapshot (see :func:`snapshot_problem`) and leaves the default."""
    intent = Intent()
    if keys.intent in values:
        try:
            intent = parse_intent(keys.intent, values[keys.intent])
        except BadData as error:
            snapshot_problem(strict, problems, error)
    failsafe: FailsafeList | None = None
    if keys.failsafe in values:
        try:
            failsafe = parse_failsafe_list(keys.failsafe, values[keys.failsafe])
        except BadData as error:
            snapshot_problem(strict, problems, error)
    return intent, failsafe

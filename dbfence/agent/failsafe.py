"""The failsafe rules of the decision core: peer promises that keep a primary writing through a
DCS outage (design and safety argument: docs/failsafe.md).

Pure like :mod:`dbfence.agent.decide`, which calls it: promises asked are actions
(:class:`~dbfence.agent.actions.AskPromises`), the answers of a round and the promise this node
gave are observations (:class:`FailsafeView`). :func:`answer_promise` is what a member decides
when asked; the HTTP adapter calls it with the member's latest view.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dbfence.agent.core_config import CoreConfig
from dbfence.agent.failsafe_view import FailsafeView, PromiseRound
from dbfence.agent.observation import LeaseView, LockView
from dbfence.agent.state import Role


class PromiseRefusal(enum.Enum):
    """Why a member does not promise."""

    FAILSAFE_OFF = "failsafe_off"
    SELF = "asked_by_itself"
    USES_LOCK = "uses_the_lock"
    NOT_THE_HOLDER = "not_the_holder"
    LEASE_EXPIRED = "lease_expired_in_dcs"
    NOT_LISTED = "not_in_failsafe_list"


@dataclass(frozen=True, slots=True)
class PromiseRequest:
    """A primary's request: promise not to race for ``duration`` seconds; we hold ``token``."""

    primary: str
    token: int
    duration: float


@dataclass(frozen=True, slots=True)
class PromiserView:
    """What a member knows when asked: its role and lease, the lock as read now, and the holder
    and token it saw the last time its DCS answered."""

    role: Role
    lease: LeaseView
    lock: LockView
    last_holder: str | None
    last_token: int | None


@dataclass(frozen=True, slots=True)
class PromiseDecision:
    granted: float | None
    refusal: PromiseRefusal | None = None
    detail: str = ""


#: Roles that neither hold nor race for the lock, and so may bind themselves by a promise.
PROMISING_ROLES = frozenset({Role.STARTING, Role.REPLICA, Role.FENCED})


def answer_promise(request: PromiseRequest, view: PromiserView, config: CoreConfig) -> PromiseDecision:
    """Whether this member promises, and for how long (never longer than the lease TTL)."""
    if not config.failsafe:
        return PromiseDecision(None, PromiseRefusal.FAILSAFE_OFF)
    if request.primary == config.node_name:
        return PromiseDecision(None, PromiseRefusal.SELF)
    if view.role not in PROMISING_ROLES or view.lease.held:
        return PromiseDecision(None, PromiseRefusal.USES_LOCK, view.role.value)
    lock = view.lock
    if lock.reachable:
        # The DCS answers: it alone says whether the requester's lease still stands.
        if lock.holder is None:
            return PromiseDecision(None, PromiseRefusal.LEASE_EXPIRED, "lock free")
        if lock.holder != request.primary or lock.token != request.token:
            return PromiseDecision(None, PromiseRefusal.NOT_THE_HOLDER, f"{lock.holder} token {lock.token}")
    elif view.last_holder != request.primary or view.last_token != request.token:
        return PromiseDecision(None, PromiseRefusal.NOT_THE_HOLDER,
                               f"last seen {view.last_holder} token {view.last_token}")
    return PromiseDecision(min(request.duration, config.ttl))


def required_members(view: FailsafeView, me: str) -> frozenset[str]:
    """Every member whose promise a primary needs: the last membership it saw, but itself."""
    return frozenset(view.membership | (view.listed or frozenset())) - {me}


def promise_deadline(view: FailsafeView, lease: LeaseView, config: CoreConfig) -> float | None:
    """The deadline the rounds grant a lease holder (None: they grant nothing).

    Every required member must have promised, in one round, for the token of our lease, and
    the list in the DCS must carry our token: only then can no node outside it race.
    """
    if not lease.held or lease.token is None:
        return None
    return promised_until(view, lease.token, config)


def promised_until(view: FailsafeView, token: int, config: CoreConfig) -> float | None:
    """Until when every member is bound by promises to the holder of ``token`` (None: they are
    not). Facts about the members, whatever became of the lease in the DCS since."""
    if not config.failsafe or view.listed_token != token:
        return None
    required = required_members(view, config.node_name)
    deadlines = [_granted_until(round_, token, required, config)
                 for round_ in (view.last_round, view.complete_round) if round_ is not None]
    return max((d for d in deadlines if d is not None), default=None)


def _granted_until(current: PromiseRound, token: int, required: frozenset[str],
                   config: CoreConfig) -> float | None:
    if current.token != token or not required <= current.asked:
        return None
    granted = current.granted()
    if not required <= granted.keys():
        return None
    shortest = min((granted[name] for name in required), default=config.ttl)
    return current.sent_at + shortest - config.safety_margin


def effective_deadline(view: FailsafeView, lease: LeaseView, config: CoreConfig) -> float | None:
    """The later of the lease deadline and the promises' deadline."""
    extension = promise_deadline(view, lease, config)
    if lease.deadline is None or extension is None:
        return lease.deadline
    return max(lease.deadline, extension)


def round_due(view: FailsafeView, lease: LeaseView, now: float, config: CoreConfig) -> float | None:
    """When a primary whose DCS cannot be asked should send its next round (None: never)."""
    if not config.failsafe or view.dcs_unreachable_since is None or not lease.held or view.asking:
        return None
    if lease.token is None or view.listed_token != lease.token:
        return None  # no list of ours in the DCS: a node we never asked could race
    previous = view.last_round
    if previous is None or previous.token != lease.token or previous.sent_at < view.dcs_unreachable_since:
        return now
    return previous.sent_at + config.renew_interval


def race_blocked(view: FailsafeView, me: str, now: float) -> tuple[str, str] | None:
    """(refusal, detail) when a promise or the failsafe list forbids this node to race."""
    given = view.given
    if given is not None and now < given.until:
        return "promise_given", f"to {given.to} (token {given.token}) until {given.until:g}"
    # Whatever our own setting: a list exists only where a primary may run on promises, and a
    # node it never asks must not race (with failsafe off here too: configurations can differ).
    if view.listed is not None and me not in view.listed:
        return "not_in_failsafe_list", ",".join(sorted(view.listed))
    return None


def keeps_source(view: FailsafeView, source: str, now: float) -> bool:
    """A promise includes: do not stop replicating from the primary it was given to."""
    given = view.given
    return given is not None and given.to == source and now < given.until


def list_to_publish(view: FailsafeView, live: frozenset[str], token: int,
                    config: CoreConfig) -> frozenset[str] | None:
    """The member list the primary should write (None: the DCS already has it).

    It only grows: every member already listed stays, whoever listed it. A member whose record
    is missing for a while (after a DCS outage, a paused agent) is still a member, and a list
    shrunk to nodes that cannot take the lock (the primary alone, which then fails or steps
    down) would keep every other node from racing for good. Departed nodes are taken out by an
    operator (``dbfence locks clear-failsafe --drop NODE``)."""
    if not config.failsafe:
        return None
    wanted = live | (view.listed or frozenset())
    if view.listed == wanted and view.listed_token == token:
        return None
    return wanted

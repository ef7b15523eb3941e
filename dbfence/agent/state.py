"""Agent roles, the transition table and the state the decision core remembers.

Every role change the core makes goes through :func:`transition`, which looks the
change up in :data:`TRANSITIONS`; a change that is not in the table raises
:class:`IllegalTransitionError`. The same table generates ``docs/state-diagram.md``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.Enum):
    """What an agent is doing for its cluster (also published in its member record)."""

    STARTING = "starting"
    REPLICA = "replica"
    CANDIDATE = "candidate"
    PROMOTING = "promoting"
    PRIMARY = "primary"
    FENCING = "fencing"
    FENCED = "fenced"


class Trigger(enum.Enum):
    """Why a role changed. Fencing triggers are also kept as ``State.fenced_reason``."""

    LOCAL_FENCE_CONFIRMED = "local_fence_confirmed"
    LOCK_FREE_AND_ELIGIBLE = "lock_free_and_eligible"
    LEASE_ACQUIRED = "lease_acquired"
    RACE_LOST = "race_lost"
    NO_LONGER_ELIGIBLE = "no_longer_eligible"
    PROMOTION_COMPLETE = "promotion_complete"
    DB_UNHEALTHY = "db_unhealthy"
    LEASE_EXPIRED = "lease_expired"
    LEASE_LOST = "lease_lost"
    SWITCHOVER = "switchover"
    SWITCHOVER_ABORTED = "switchover_aborted"
    RELEASED = "released"
    HANDED_OVER = "handed_over"
    ERRANT_GTIDS = "errant_gtids"
    REJOINED = "rejoined"
    OVERTAKEN = "overtaken"
    ADOPTED = "adopted"
    TAKES_OVER = "takes_over"


@dataclass(frozen=True, slots=True)
class Transition:
    source: Role
    trigger: Trigger
    target: Role
    summary: str


TRANSITIONS: tuple[Transition, ...] = (
    Transition(Role.STARTING, Trigger.LOCAL_FENCE_CONFIRMED, Role.REPLICA,
               "gate blocked and mysqld read-only (or down)"),
    Transition(Role.STARTING, Trigger.ADOPTED, Role.PROMOTING,
               "new cluster: took the free lock for its running, most advanced primary, unfenced"),
    Transition(Role.REPLICA, Trigger.LOCK_FREE_AND_ELIGIBLE, Role.CANDIDATE,
               "lock free, healthy, caught up, most advanced, cooldown over"),
    Transition(Role.REPLICA, Trigger.ERRANT_GTIDS, Role.FENCED,
               "holds transactions the primary lacks"),
    Transition(Role.CANDIDATE, Trigger.LEASE_ACQUIRED, Role.PROMOTING, "won the race"),
    Transition(Role.CANDIDATE, Trigger.RACE_LOST, Role.REPLICA, "another node holds the lock"),
    Transition(Role.CANDIDATE, Trigger.NO_LONGER_ELIGIBLE, Role.REPLICA,
               "eligibility, DCS or lease lost before winning"),
    Transition(Role.PROMOTING, Trigger.OVERTAKEN, Role.REPLICA,
               "a healthy peer has strictly more data; steps down before any write"),
    Transition(Role.PROMOTING, Trigger.PROMOTION_COMPLETE, Role.PRIMARY,
               "relay applied, replication stopped, writable, token written"),
    Transition(Role.PROMOTING, Trigger.DB_UNHEALTHY, Role.FENCING, "database unhealthy"),
    Transition(Role.PROMOTING, Trigger.LEASE_EXPIRED, Role.FENCING, "now >= lease deadline"),
    Transition(Role.PROMOTING, Trigger.LEASE_LOST, Role.FENCING, "lock no longer ours"),
    Transition(Role.PRIMARY, Trigger.DB_UNHEALTHY, Role.FENCING, "database unhealthy"),
    Transition(Role.PRIMARY, Trigger.LEASE_EXPIRED, Role.FENCING, "now >= lease deadline"),
    Transition(Role.PRIMARY, Trigger.LEASE_LOST, Role.FENCING, "lock no longer ours"),
    Transition(Role.PRIMARY, Trigger.SWITCHOVER, Role.FENCING, "operator switchover to a replica"),
    Transition(Role.FENCING, Trigger.SWITCHOVER_ABORTED, Role.PROMOTING,
               "switchover withdrawn, or its target cannot take over, while the lease is still valid"),
    Transition(Role.FENCING, Trigger.RELEASED, Role.FENCED,
               "fence complete and the lock released or expired"),
    Transition(Role.FENCING, Trigger.HANDED_OVER, Role.REPLICA,
               "switchover: fence complete, lock released or expired, the target holds all it has"),
    Transition(Role.FENCED, Trigger.TAKES_OVER, Role.CANDIDATE,
               "no primary, no other member may race, and it holds all they hold but never-acknowledged "
               "writes"),
    Transition(Role.FENCED, Trigger.REJOINED, Role.REPLICA,
               "no errant GTIDs against the new primary; repointed"),
)

_TABLE: dict[tuple[Role, Trigger], Role] = {
    (entry.source, entry.trigger): entry.target for entry in TRANSITIONS
}


class IllegalTransitionError(RuntimeError):
    """The core tried a role change that the transition table does not allow."""

    def __init__(self, source: Role, trigger: Trigger) -> None:
        super().__init__(f"no transition from {source.value} on {trigger.value}")
        self.source = source
        self.trigger = trigger


#: Short explanation of each role, used by the diagram generator and the docs.
ROLE_DESCRIPTIONS: dict[Role, str] = {
    Role.STARTING: "Fresh agent process. Blocks its gate and sets mysqld read-only before anything else, "
                   "except on a new cluster's running primary, which it adopts without fencing.",
    Role.REPLICA: "Follows the lock holder once it is primary and its errant-GTID check is clean; "
                  "races when the lock is free and it is eligible.",
    Role.CANDIDATE: "Eligible replica that asked the DCS for the lock and waits for the answer.",
    Role.PROMOTING: "Holds the lock: waits for its relay log, stops replication, becomes writable, "
                    "writes the fencing token; the gate is still blocked.",
    Role.PRIMARY: "Holds a valid lease and admits clients on its gate until the lease deadline.",
    Role.FENCING: "Fails the discovery check, blocks the gate, cuts connections, sets read-only; "
                  "releases the lock only once all of that is observed done.",
    Role.FENCED: "Former primary. Never admits; rejoins as a replica only without errant GTIDs, "
                 "otherwise stays here with the reason. With no primary and no other member that "
                 "may race, races only if it holds all they hold but never-acknowledged writes.",
}


def transition(source: Role, trigger: Trigger) -> Role:
    """Target role of a legal transition; raises :class:`IllegalTransitionError` otherwise."""
    try:
        return _TABLE[(source, trigger)]
    except KeyError:
        raise IllegalTransitionError(source, trigger) from None


@dataclass(frozen=True, slots=True)
class State:
    """What the core remembers between decisions (everything else is observed anew).

    ``since`` is the observation time at which the role was entered; ``fenced_reason``
    says why the node is FENCING/FENCED; ``switchover_target`` is the node a FENCING
    primary hands over to; ``handed_over``: that target was seen holding everything this
    node holds after its fence was complete (the lock is released then). ``members_seen``: the
    other members whose records this agent process has read, kept through role changes: a
    takeover without a primary waits for every one of them (a record that has not come back
    yet may be the one holding acknowledged writes). ``first_read_at``: when this agent process
    first read the DCS (None: not yet); until ``member_stale_after`` later it has not seen every
    live member's record yet (a restarted agent remembers none). ``awaited_rivals`` (PROMOTING,
    lossless): the rivals whose fresh records the winner raced against and that have not yet
    published a record that saw its lease; a role change forgets them.
    """

    role: Role = Role.STARTING
    since: float = 0.0
    fenced_reason: Trigger | None = None
    switchover_target: str | None = None
    handed_over: bool = False
    members_seen: frozenset[str] = frozenset()
    first_read_at: float | None = None
    awaited_rivals: frozenset[str] = frozenset()

    @classmethod
    def initial(cls, now: float) -> State:
        """State of a freshly started agent process (it knows nothing of its past)."""
        return cls(role=Role.STARTING, since=now)

    def moved(self, trigger: Trigger, now: float, *, switchover_target: str | None = None) -> State:
        """The state after a legal transition; keeps the fencing reason while fenced."""
        target = transition(self.role, trigger)
        if target in (Role.FENCING, Role.FENCED):
            reason = self.fenced_reason if target is Role.FENCED and trigger is Trigger.RELEASED else trigger
            return State(role=target, since=now, fenced_reason=reason, switchover_target=switchover_target,
                         members_seen=self.members_seen, first_read_at=self.first_read_at)
        return State(role=target, since=now, members_seen=self.members_seen, first_read_at=self.first_read_at)

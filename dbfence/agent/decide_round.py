"""One round of the decision core: what ``decide`` returns, and the accumulator it fills.

:class:`Decision`, :class:`Refusal` and :class:`RefusalReason` are the core's output;
:class:`Round` gathers one decision (evolving state, actions in order, refusals, wake-up times)
so the role handlers in the sibling ``decide_*`` modules stay small. Also the few facts every
handler asks about (a record's freshness, the discovery tag to show). Pure, like all the core.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from dbfence.agent.actions import Action, ActionReason, FailDiscoveryCheck, RegisterDiscovery
from dbfence.agent.core_config import CoreConfig
from dbfence.agent.observation import DiscoveryTag, MemberRecord, Observation
from dbfence.agent.state import Role, State, Trigger


class RefusalReason(enum.Enum):
    """Why the core did not do something it otherwise would (race, rejoin, release, ...)."""

    PAUSED = "paused"
    DB_UNHEALTHY = "db_unhealthy"
    NOT_PROMOTABLE = "not_promotable"
    POSITION_UNKNOWN = "position_unknown"
    RELAY_LOG_NOT_APPLIED = "relay_log_not_applied"
    LAG_TOO_HIGH = "lag_too_high"
    COOLDOWN = "cooldown"
    SWITCHOVER_TO_OTHER = "switchover_to_other"
    PEER_MORE_ADVANCED = "peer_more_advanced"
    UNREPLICATED_OWN_WRITES = "unreplicated_own_writes"
    PEER_POSITION_UNKNOWN = "peer_position_unknown"  # may hold acknowledged writes: decide_unknown_peers.py
    DCS_UNREACHABLE = "dcs_unreachable"
    PRIMARY_NOT_READY = "primary_not_ready"
    ERRANT_UNCHECKED = "errant_unchecked"
    ERRANT_GTIDS = "errant_gtids"
    NO_PRIMARY_TO_REJOIN = "no_primary_to_rejoin"
    TAKEOVER_UNPROVEN = "takeover_unproven"  # no primary, nobody races: decide_takeover.py
    FENCE_INCOMPLETE = "fence_incomplete"
    SWITCHOVER_TARGET_UNSUITABLE = "switchover_target_unsuitable"
    SWITCHOVER_TARGET_BEHIND = "switchover_target_behind"
    AWAITING_PEERS = "awaiting_peers"
    REPAIR_RUNNING = "repair_running"
    REPAIR_UNSAFE = "repair_unsafe"
    REPAIR_GAVE_UP = "repair_gave_up"
    PROMISE_GIVEN = "promise_given"
    NOT_IN_FAILSAFE_LIST = "not_in_failsafe_list"
    SOURCE_UNMANAGED = "source_unmanaged"  # adoption rule (a): dbfence/agent/core_adoption.py
    ADOPTION_PENDING = "adoption_pending"  # rule (b): waiting, unfenced, for the facts it needs
    NOT_ADOPTED = "not_adopted"  # rule (b): a writable node started as ever (fenced), and why


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: RefusalReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """The new state, the actions to execute in order, when to decide again at the latest,
    and the refusals that explain what the core is waiting for."""

    state: State
    actions: tuple[Action, ...]
    next_wakeup: float
    refusals: tuple[Refusal, ...] = ()


#: Roles in which progress is expected soon, so the core asks to be woken quickly.
TRANSITIONAL_ROLES = frozenset({Role.STARTING, Role.CANDIDATE, Role.PROMOTING, Role.FENCING})


FENCE_ACTION_REASON = {
    Trigger.DB_UNHEALTHY: ActionReason.DB_UNHEALTHY,
    Trigger.LEASE_EXPIRED: ActionReason.LEASE_EXPIRED,
    Trigger.LEASE_LOST: ActionReason.LEASE_LOST,
    Trigger.SWITCHOVER: ActionReason.SWITCHOVER,
    Trigger.ERRANT_GTIDS: ActionReason.ERRANT_GTIDS,
}


@dataclass
class Round:
    """Accumulates one decision: the evolving state, actions in order, wake-up times."""

    obs: Observation
    config: CoreConfig
    state: State
    actions: list[Action] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    wake_times: list[float] = field(default_factory=list)

    @property
    def me(self) -> str:
        return self.config.node_name

    @property
    def now(self) -> float:
        return self.obs.now

    def emit(self, action: Action) -> None:
        self.actions.append(action)

    def refuse(self, reason: RefusalReason, detail: str = "") -> None:
        self.refusals.append(Refusal(reason, detail))

    def move(self, trigger: Trigger, *, switchover_target: str | None = None) -> None:
        self.state = self.state.moved(trigger, self.now, switchover_target=switchover_target)

    def wake_at(self, when: float) -> None:
        self.wake_times.append(when)

    def finish(self) -> Decision:
        interval = (
            self.config.settle_interval if self.state.role in TRANSITIONAL_ROLES
            else self.config.poll_interval
        )
        wakeup = min([self.now + interval, *(t for t in self.wake_times if t > self.now)])
        return Decision(self.state, tuple(self.actions), wakeup, tuple(self.refusals))


def fresh(r: Round, record: MemberRecord) -> bool:
    return r.now - record.last_seen <= r.config.member_stale_after


def records_not_read_yet(r: Round) -> str:
    """Why this agent cannot vouch yet that it sees every live member's record: since it (re)started
    it has not read the DCS for ``member_stale_after`` (records come back one by one, and a
    restarted agent remembers none); '' once it has. Wakes the loop for that moment."""
    first_read = r.state.first_read_at
    settled_at = None if first_read is None else first_read + r.config.member_stale_after
    if settled_at is not None and r.now >= settled_at:
        return ""
    if settled_at is not None:
        r.wake_at(settled_at)
    return f"this agent has not read the members' records for {r.config.member_stale_after:g} s yet"


def absent_members(r: Round, others: Sequence[MemberRecord]) -> list[str]:
    """Members this agent has seen since it started whose fresh record is not among ``others``."""
    return sorted(r.state.members_seen - {record.name for record in others if fresh(r, record)})


def sync_discovery(r: Round, desired: DiscoveryTag | None, reason: ActionReason) -> None:
    if desired is None:
        if r.obs.discovery is not None:
            r.emit(FailDiscoveryCheck(reason))
    elif r.obs.discovery is not desired:
        r.emit(RegisterDiscovery(desired, reason))

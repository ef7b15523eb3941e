"""The decision core: ``decide(observation, state, config) -> Decision``.

Pure, in the sans-I/O style: no sockets, no DCS or database clients, no clock, no
logging. Time arrives in the observation, effects leave as :mod:`actions`, and the
reasons for doing nothing leave as :class:`Refusal` values the CLI can show.

Policy summary (details in docs/decision-core.md):

* PRIMARY keeps admitting only while its lease is held and ``now < deadline``; when
  the lease is lost or expired, or the database turns unhealthy, or an operator asks
  for a switchover, it goes FENCING.
* FENCING fails the discovery check, blocks the gate and cuts connections (for a
  switchover: drains it first, so transactions in flight can finish), sets read-only;
  it releases the lock only when the observation shows all of that done (and, for a
  switchover, once the target has applied everything).
* A REPLICA races only when the lock is free and it is healthy, caught up, the most
  advanced reachable candidate (ties: priority, then name), not paused, past the
  cooldown, and holds no unreplicated writes of its own (a former primary).
* The winner promotes step by step (relay log, stop replication, writable, token)
  and only then admits; replicas follow the lock holder as soon as its record says
  PROMOTING (a lossless token write may wait for their ack), FENCING or PRIMARY.
* FENCED (a former primary) rejoins only through a clean errant-GTID check against
  the current primary; with ``rejoin_mode = truncate`` or ``rebuild`` it may first remove
  errant transactions that were provably never acknowledged, or be rebuilt (:mod:`rejoin`).
* Pause freezes every role change except the safety fence of a lease holder whose
  lease is lost or expired; renewals continue.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from dbfence.agent import failsafe
from dbfence.agent.actions import (
    AcquireLock,
    Action,
    ActionReason,
    AdmitGate,
    AskPromises,
    BlockGate,
    ClearSwitchover,
    DetachSource,
    FailDiscoveryCheck,
    Promote,
    PublishFailsafeMembers,
    PublishMember,
    RecordFailover,
    RegisterDiscovery,
    ReleaseLock,
    RenewLock,
    Repoint,
    SetReadOnly,
    WaitRelayLog,
    WriteFencingToken,
)
from dbfence.agent.core_config import CoreConfig
from dbfence.agent.gtid import GtidPosition, RankKey, candidate_sort_key
from dbfence.agent.observation import DiscoveryTag, ErrantCheck, MemberInfo, MemberRecord, Observation
from dbfence.agent.rejoin import plan_repair
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
    DCS_UNREACHABLE = "dcs_unreachable"
    PRIMARY_NOT_READY = "primary_not_ready"
    ERRANT_UNCHECKED = "errant_unchecked"
    ERRANT_GTIDS = "errant_gtids"
    NO_PRIMARY_TO_REJOIN = "no_primary_to_rejoin"
    FENCE_INCOMPLETE = "fence_incomplete"
    SWITCHOVER_TARGET_UNSUITABLE = "switchover_target_unsuitable"
    SWITCHOVER_TARGET_BEHIND = "switchover_target_behind"
    AWAITING_PEERS = "awaiting_peers"
    REPAIR_RUNNING = "repair_running"
    REPAIR_UNSAFE = "repair_unsafe"
    REPAIR_GAVE_UP = "repair_gave_up"
    PROMISE_GIVEN = "promise_given"
    NOT_IN_FAILSAFE_LIST = "not_in_failsafe_list"


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

#: Roles whose members may be the most advanced candidate a racing replica defers to.
_RIVAL_ROLES = frozenset({Role.STARTING, Role.REPLICA, Role.CANDIDATE, Role.PROMOTING})

_FENCE_ACTION_REASON = {
    Trigger.DB_UNHEALTHY: ActionReason.DB_UNHEALTHY,
    Trigger.LEASE_EXPIRED: ActionReason.LEASE_EXPIRED,
    Trigger.LEASE_LOST: ActionReason.LEASE_LOST,
    Trigger.SWITCHOVER: ActionReason.SWITCHOVER,
    Trigger.ERRANT_GTIDS: ActionReason.ERRANT_GTIDS,
}


@dataclass
class _Round:
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


def decide(observation: Observation, state: State, config: CoreConfig) -> Decision:
    """Decide what this agent does next. Pure: same inputs, same decision."""
    current = _Round(observation, config, state)
    _HANDLERS[state.role](current)
    _publish_member(current)
    return current.finish()


# --------------------------------------------------------------------------- helpers


def _fresh(r: _Round, record: MemberRecord) -> bool:
    return r.now - record.last_seen <= r.config.member_stale_after


def _fence_actions(r: _Round, reason: ActionReason, *, insist: bool) -> None:
    """Ordered fence: discovery check failed, gate blocked with connections cut, read-only.

    Emits only what the observation shows undone. ``insist`` also retries read-only
    when mysqld could not be asked (fencing, starting); steady roles only correct an
    observed writable mysqld.
    """
    obs = r.obs
    if obs.discovery is not None:
        r.emit(FailDiscoveryCheck(reason))
    if obs.gate.admitting and reason is ActionReason.SWITCHOVER:
        # Planned: transactions in flight may finish (mysqld is still writable) before the cut.
        r.emit(BlockGate(cut_connections=True, reason=reason, drain=r.config.drain_timeout))
    elif obs.gate.admitting or obs.gate.open_connections > 0:
        r.emit(BlockGate(cut_connections=True, reason=reason))
    if obs.db.read_only is False or (insist and obs.db.read_only is None):
        r.emit(SetReadOnly(read_only=True, reason=reason))


def _keep_gate_closed(r: _Round) -> None:
    if r.obs.gate.admitting or r.obs.gate.open_connections > 0:
        r.emit(BlockGate(cut_connections=True, reason=ActionReason.NOT_PRIMARY))


def _keep_replica_safe(r: _Round) -> None:
    """Defensive: a replica never admits and never runs writable (discovery is separate)."""
    _keep_gate_closed(r)
    if r.obs.db.read_only is False:
        r.emit(SetReadOnly(read_only=True, reason=ActionReason.NOT_PRIMARY))


def _detach_lost_source(r: _Round) -> None:
    """Stop taking the binlog of a source that no longer holds the lock (IO thread only).

    A source that lost the lock has fenced: its gate blocked before it released the lock or
    reached its deadline, so nothing it ships afterwards was acknowledged to a client. Such
    events (e.g. commits that sat in a frozen mysqld's commit path) are missing on the new
    primary and would only make this node errant. In lossless mode every acknowledged commit
    is already in some replica's relay log, so detaching as soon as the lock is free loses
    nothing and keeps race positions still. In async mode acknowledged commits may exist only
    on the old primary, and their tail may still arrive while the lock is free: detach only
    once another node holds it. The relay log keeps being applied either way.
    """
    lock = r.obs.lock
    replication = r.obs.db.replication
    source = replication.source
    if source is None or not replication.receiving or not lock.reachable or lock.holder == source:
        return
    if failsafe.keeps_source(r.obs.failsafe, source, r.now):
        return  # promised: it may still be admitting, and its commits wait for our acks
    if lock.holder is not None or r.config.lossless:
        r.emit(DetachSource(ActionReason.SOURCE_LOST_LOCK))


def _acknowledges(r: _Round) -> bool:
    """Whether this replica acknowledges lossless commits: only if it can become primary. A
    commit whose one copy sits on a node that never races would be lost at the next failover."""
    return r.config.lossless and r.config.priority > 0


def _renew_if_due(r: _Round) -> None:
    lease = r.obs.lease
    if not lease.held or lease.token is None or lease.deadline is None:
        return
    renewed_at = lease.deadline - r.config.lease_span
    due = renewed_at + r.config.renew_interval
    if r.now >= due:
        r.emit(RenewLock(lease.token, ActionReason.RENEWAL_DUE))
    else:
        r.wake_at(due)
    r.wake_at(lease.deadline)
    promised = failsafe.promise_deadline(r.obs.failsafe, lease, r.config)
    if promised is not None:
        r.wake_at(promised)


def _release_unwanted_lease(r: _Round) -> None:
    """A role that must not hold the lock gives it back, but only behind a complete fence, and
    only while giving it back can do something: not while the DCS is unreachable, nor once the
    lease has surely expired there (deadline + margin; the adapter may still report a lease it
    could not renew as held). Asked for regardless, a release that cannot happen repeats every
    round for as long as the DCS is gone."""
    lease = r.obs.lease
    if not lease.held or lease.token is None or not r.obs.fence_complete or not r.obs.lock.reachable:
        return
    if lease.deadline is not None and r.now >= lease.deadline + r.config.safety_margin:
        return
    r.emit(ReleaseLock(lease.token, ActionReason.UNWANTED_LEASE))


def _sync_discovery(r: _Round, desired: DiscoveryTag | None, reason: ActionReason) -> None:
    if desired is None:
        if r.obs.discovery is not None:
            r.emit(FailDiscoveryCheck(reason))
    elif r.obs.discovery is not desired:
        r.emit(RegisterDiscovery(desired, reason))


def _lease_trouble(r: _Round) -> Trigger | None:
    """LEASE_LOST / LEASE_EXPIRED when a lease holder may no longer act as one."""
    obs = r.obs
    lease = obs.lease
    if not lease.held or (obs.lock.reachable and obs.lock.holder != r.me):
        return Trigger.LEASE_LOST
    deadline = failsafe.effective_deadline(obs.failsafe, lease, r.config)
    if deadline is None or r.now >= deadline:
        return Trigger.LEASE_EXPIRED
    return None


def _ready_primary(r: _Round) -> str | None:
    """The lock holder, when it is another node whose fresh record says PRIMARY."""
    lock = r.obs.lock
    if not lock.reachable or lock.holder is None or lock.holder == r.me:
        return None
    record = r.obs.member(lock.holder)
    if record is None or record.info.role is not Role.PRIMARY or not _fresh(r, record):
        return None
    return lock.holder


#: Roles of a lock holder that replicas follow before it admits (see ``_follow_holder``).
_FOLLOWED_UNREADY_ROLES = frozenset({Role.PROMOTING, Role.FENCING})


def _unready_holder(r: _Round) -> str | None:
    """The lock holder, when it is another node whose fresh record says PROMOTING or FENCING."""
    lock = r.obs.lock
    if not lock.reachable or lock.holder is None or lock.holder == r.me:
        return None
    record = r.obs.member(lock.holder)
    if record is None or record.info.role not in _FOLLOWED_UNREADY_ROLES or not _fresh(r, record):
        return None
    return lock.holder


@dataclass(frozen=True, slots=True)
class _Rival:
    """A peer that could take the lock instead of this node: what it holds once its relay log
    is applied, and what it has applied."""

    record: MemberRecord
    holds: GtidPosition
    applied: GtidPosition

    def sort_key(self) -> tuple[RankKey, RankKey, int, tuple[int, ...]]:
        info = self.record.info
        return candidate_sort_key(self.holds, self.applied, info.priority, info.name)


def _rivals(r: _Round) -> list[_Rival]:
    """Promotable peers with a known position that a racing replica must not overtake.

    In lossless mode stale and unhealthy records count too: a paused agent, or a replica whose
    applier is stuck, may sit on the only copy of acknowledged writes (a semi-sync ack means
    "in a relay log", not "applied"); only that node can keep them. Callers let unhealthy
    peers win ties: they do not race, and waiting for them would stall for nothing.
    """
    rivals: list[_Rival] = []
    for record in r.obs.members:
        info = record.info
        holds = info.holds
        if record.name == r.me or info.position is None or holds is None:
            continue
        if info.priority <= 0 or info.role not in _RIVAL_ROLES:
            continue
        if not r.config.lossless and not (info.healthy and _fresh(r, record)):
            continue
        if _stays_out_for_own_writes(r, record):
            continue
        rivals.append(_Rival(record, holds, info.position))
    return rivals


def _stays_out_for_own_writes(r: _Round, rival: MemberRecord) -> bool:
    """Whether ``rival`` refuses to race for unreplicated writes of its own (judged as it does,
    from the other positions it sees: ours and the other records).

    What it holds beyond the rest of us is then its own writes that no other node received: in
    lossless mode never acknowledged (no replica had them), so nothing is lost without them, and
    deferring to a node that will not race would leave the cluster without a primary. It rejoins
    under the winner (or is fenced for its errant writes). A rival that received more than it
    applied may hold others' (acknowledged) writes: it still counts.
    """
    info = rival.info
    if info.server_id is None or info.position is None or info.holds != info.position:
        return False
    peers = [(r.obs.db.position, r.obs.db.holds)] + [
        (record.info.position, record.info.holds) for record in r.obs.members
        if record.name not in (r.me, info.name)
    ]
    return bool(_unreplicated_own_domains(info.position, info.server_id, peers))


def _unreplicated_own_domains(
    position: GtidPosition, server_id: int,
    peers: list[tuple[GtidPosition | None, GtidPosition | None]],
) -> list[int]:
    """Domains whose last transaction this server wrote, no peer reached, and that do not simply
    extend every peer's stream (``_own_writes_lead``): the node must rejoin under a primary."""
    applied = [peer_position for peer_position, _ in peers if peer_position is not None]
    domains = set(position.own_unreplicated_domains(server_id, applied)) | _forked_own_domains(
        position, server_id, [holds for _, holds in peers])
    return [domain for domain in sorted(domains)
            if not _own_writes_lead(position, server_id, domain, [holds for _, holds in peers])]


def _forked_own_domains(position: GtidPosition, server_id: int,
                        peer_holds: list[GtidPosition | None]) -> set[int]:
    """Domains whose last transaction this server wrote while a peer holds another server's
    transaction with the same sequence number: two histories, surely forked there, whatever a
    higher sequence number elsewhere suggests (it may have passed the other branch only)."""
    forked = set()
    for gtid in position.gtids:
        if gtid.server_id != server_id:
            continue
        for holds in peer_holds:
            theirs = None if holds is None else holds.get(gtid.domain_id)
            if theirs is not None and theirs.seq_no == gtid.seq_no and theirs.server_id != server_id:
                forked.add(gtid.domain_id)
    return forked


def race_refusals(observation: Observation, config: CoreConfig) -> tuple[Refusal, ...]:
    """Everything that stops this node from racing for a free lock (empty: it may race)."""
    r = _Round(observation, config, State())
    _collect_race_refusals(r)
    return tuple(r.refusals)


def _collect_race_refusals(r: _Round) -> None:
    obs, config = r.obs, r.config
    db = obs.db
    intents = obs.intents
    if intents.paused:
        r.refuse(RefusalReason.PAUSED)
    blocked = failsafe.race_blocked(obs.failsafe, r.me, r.now)
    if blocked is not None:
        r.refuse(RefusalReason(blocked[0]), blocked[1])
        given = obs.failsafe.given
        if given is not None and obs.failsafe.promise_live(r.now):
            r.wake_at(given.until)
    if not db.health.healthy:
        r.refuse(RefusalReason.DB_UNHEALTHY, ", ".join(db.health.reasons))
    if config.priority <= 0:
        r.refuse(RefusalReason.NOT_PROMOTABLE)
    target = intents.switchover_target
    operator_override = intents.skip_cooldown or target == r.me
    if obs.last_failover_at is not None and not operator_override:
        cooldown_end = obs.last_failover_at + config.cooldown
        if r.now < cooldown_end:
            r.refuse(RefusalReason.COOLDOWN, f"until {cooldown_end:g}")
            r.wake_at(cooldown_end)
    if target is not None and target != r.me and _switchover_target_can_race(r, target):
        r.refuse(RefusalReason.SWITCHOVER_TO_OTHER, target)
    position, holds = db.position, db.holds
    if position is None or holds is None or db.server_id is None:
        _refuse_if_lagging(r)
        r.refuse(RefusalReason.POSITION_UNKNOWN)
        return
    rivals = _rivals(r)
    if not (config.lossless and all(rival.holds.rank_key() < holds.rank_key() for rival in rivals)):
        # Lossless and holding more than any rival: this node is the only one that can keep
        # what it received, so it races and applies its relay log while promoting.
        _refuse_if_lagging(r)
    mine = candidate_sort_key(holds, position, config.priority, r.me)
    for rival in rivals:
        if rival.holds.rank_key() > holds.rank_key():
            ahead = True  # it holds more: whatever its health or priority, only it can keep that
        elif not rival.record.info.healthy or target == r.me:
            ahead = False  # an unhealthy peer does not race; the switchover target yields only to data
        else:
            ahead = rival.sort_key() > mine
        if ahead:
            r.refuse(RefusalReason.PEER_MORE_ADVANCED, f"{rival.record.name} holds {rival.holds}")
    peers = [(record.info.position, record.info.holds) for record in obs.members if record.name != r.me]
    unreplicated = _unreplicated_own_domains(position, db.server_id, peers)
    if unreplicated:
        r.refuse(RefusalReason.UNREPLICATED_OWN_WRITES,
                 "domains " + ",".join(str(domain) for domain in unreplicated))


def _own_writes_lead(position: GtidPosition, server_id: int, domain: int,
                     peer_holds: list[GtidPosition | None]) -> bool:
    """Whether this node's own unreplicated writes in ``domain`` only extend what every peer has.

    They do when every peer's record is known and, in that domain, has nothing or an earlier
    transaction of this very server: the peer's stream ends inside ours, so it has nothing we
    lack there. Such a node (a primary whose agent restarted with a commit no replica received:
    never acknowledged, as semi-sync had no ack for it) is the most advanced, and the others
    rightly defer to it; refusing it too would leave the cluster without a primary for good. A
    peer whose last transaction there came from another server may hold writes we lack (we
    wrote as a primary and were fenced): then we must rejoin under a primary first.
    """
    own = position.get(domain)
    assert own is not None  # one of our own unreplicated domains
    if not peer_holds:
        return False  # no record to compare with (every agent restarting): nothing shows it leads
    for holds in peer_holds:
        if holds is None:
            return False
        theirs = holds.get(domain)
        if theirs is not None and (theirs.server_id != server_id or theirs.seq_no >= own.seq_no):
            return False
    return True


def _switchover_target_can_race(r: _Round, target: str) -> bool:
    """Whether a switchover target may still take the lock, so the others leave it to it.

    An intent can outlive its use: a target that became primary and fenced before it cleared
    the intent (a stall, a pause) is FENCED and never races, nor does one with writes of its own
    that nobody else has (a former primary: it must rejoin first); a target that holds less
    than this node yields to it (it never overtakes data). Deferring to either would leave the cluster
    without a primary until an operator cleared the intent.
    """
    record = r.obs.member(target)
    if record is None or not record.info.healthy or not _fresh(r, record):
        return False
    theirs, mine = record.info.holds, r.obs.db.holds
    if record.info.role not in _RIVAL_ROLES or theirs is None or _stays_out_for_own_writes(r, record):
        return False
    return mine is None or theirs.rank_key() >= mine.rank_key()


def _refuse_if_lagging(r: _Round) -> None:
    replication = r.obs.db.replication
    if not replication.relay_log_applied:
        r.refuse(RefusalReason.RELAY_LOG_NOT_APPLIED)
    lag = replication.lag_seconds
    if lag is None or lag > r.config.max_lag_seconds:
        r.refuse(RefusalReason.LAG_TOO_HIGH, "unknown" if lag is None else f"{lag:g}s")


def _publish_member(r: _Round) -> None:
    """Publish this node's record when it changed or is due for a heartbeat."""
    obs = r.obs
    if not obs.lock.reachable:
        return
    admitting = obs.gate.admitting
    for action in r.actions:
        if isinstance(action, BlockGate):
            admitting = False
        elif isinstance(action, AdmitGate):
            admitting = True
    info = MemberInfo(
        name=r.me,
        role=r.state.role,
        healthy=obs.db.health.healthy,
        position=obs.db.position,
        gate_admitting=admitting,
        priority=r.config.priority,
        received=obs.db.received,
        seen_token=obs.lock.token if obs.lock.holder is not None else None,
        server_id=obs.db.server_id,
    )
    own = obs.member(r.me)
    if own is None or own.info != info:
        r.emit(PublishMember(info, ActionReason.MEMBER_CHANGED))
    elif r.now - own.last_seen >= r.config.publish_interval:
        r.emit(PublishMember(info, ActionReason.MEMBER_HEARTBEAT))
    else:
        r.wake_at(own.last_seen + r.config.publish_interval)


# --------------------------------------------------------------------------- roles


def _starting(r: _Round) -> None:
    _fence_actions(r, ActionReason.STARTUP, insist=True)
    _release_unwanted_lease(r)
    if r.obs.fence_complete:
        r.move(Trigger.LOCAL_FENCE_CONFIRMED)
    else:
        r.refuse(RefusalReason.FENCE_INCOMPLETE)


def _replica(r: _Round) -> None:
    obs = r.obs
    _keep_replica_safe(r)
    _detach_lost_source(r)
    _release_unwanted_lease(r)
    if obs.intents.paused:
        r.refuse(RefusalReason.PAUSED)
        return
    primary = _ready_primary(r)
    if primary is not None:
        _follow_holder(r, primary, Role.PRIMARY)
        return
    holder = _unready_holder(r)
    if holder is not None:
        record = obs.member(holder)
        assert record is not None  # _unready_holder checked it
        _follow_holder(r, holder, record.info.role)
        return
    _sync_discovery(r, None, ActionReason.NOT_PRIMARY)
    if not obs.lock.reachable:
        r.refuse(RefusalReason.DCS_UNREACHABLE)
    elif obs.lock.holder is not None:
        r.refuse(RefusalReason.PRIMARY_NOT_READY, obs.lock.holder)
    else:
        _collect_race_refusals(r)
        if not r.refusals:
            r.move(Trigger.LOCK_FREE_AND_ELIGIBLE)
            r.emit(AcquireLock(ActionReason.LOCK_FREE_AND_ELIGIBLE))


def _follow_holder(r: _Round, holder: str, role: Role) -> None:
    """Replicate from the lock holder (``role``: what its record says): a PRIMARY, or one still
    PROMOTING or FENCING. The lock holder's binlog is the cluster's history whatever its role.

    Following a promoting holder is what lets its promotion finish: a lossless holder whose
    semi-sync was left on (a primary whose agent restarted and won again) writes its fencing
    token only once a replica acknowledges it. Following a fencing holder is what lets a
    switchover finish: it releases the lock only once the target has everything it has. It is
    safe: such a holder's gate is closed (it admits only as PRIMARY), a promoting holder steps
    down only before writing anything (and then holds a prefix of what the more advanced peer
    holds, so nothing here forks), and the repoint needs a clean errant check against it. What
    looks errant against a holder that has not applied its relay log yet may not be once it
    has, and a FENCING holder may be a promotion that failed behind us: only a PRIMARY's check
    fences.
    """
    obs = r.obs
    replication = obs.db.replication
    check = replication.errant
    following = False
    if check is None or check.against != holder:
        r.refuse(RefusalReason.ERRANT_UNCHECKED, holder)
    elif not check.clean and role is not Role.PRIMARY:
        errant = ",".join(check.gtids)
        r.refuse(RefusalReason.PRIMARY_NOT_READY, f"{holder} (errant against it so far: {errant})")
    elif not check.clean:
        r.refuse(RefusalReason.ERRANT_GTIDS, ",".join(check.gtids))
        r.move(Trigger.ERRANT_GTIDS)
        _sync_discovery(r, None, ActionReason.ERRANT_GTIDS)
        return
    elif replication.source != holder or not replication.receiving:
        # Also restarts an IO thread stopped while its source was without the lock.
        r.emit(Repoint(holder, _acknowledges(r), ActionReason.FOLLOW_PRIMARY))
    else:
        # Advertised for reads only once it provably follows a primary cleanly.
        following = role is Role.PRIMARY and obs.db.health.healthy
    _sync_discovery(r, DiscoveryTag.REPLICA if following else None, ActionReason.FOLLOW_PRIMARY)


def _candidate(r: _Round) -> None:
    obs = r.obs
    _keep_gate_closed(r)
    lease = obs.lease
    if lease.held:
        if obs.intents.paused:
            # Frozen: keep what we won, promote nothing until resumed.
            r.refuse(RefusalReason.PAUSED)
            _renew_if_due(r)
        elif lease.valid_at(r.now) and _lease_trouble(r) is None:
            r.move(Trigger.LEASE_ACQUIRED)
            _promoting(r)
        else:
            r.move(Trigger.NO_LONGER_ELIGIBLE)
            _release_unwanted_lease(r)
        return
    if obs.intents.paused:
        r.refuse(RefusalReason.PAUSED)
    elif not obs.lock.reachable:
        r.refuse(RefusalReason.DCS_UNREACHABLE)
        r.move(Trigger.NO_LONGER_ELIGIBLE)
    elif obs.lock.holder is not None:
        r.move(Trigger.RACE_LOST)
    else:
        _collect_race_refusals(r)
        if r.refusals:
            r.move(Trigger.NO_LONGER_ELIGIBLE)
        else:
            r.emit(AcquireLock(ActionReason.LOCK_FREE_AND_ELIGIBLE))


def _fence_now(r: _Round, trigger: Trigger, *, switchover_target: str | None = None) -> None:
    r.move(trigger, switchover_target=switchover_target)
    _fence_actions(r, _FENCE_ACTION_REASON[trigger], insist=True)
    _renew_if_due(r)


def _promoting(r: _Round) -> None:
    obs = r.obs
    trouble = _lease_trouble(r)
    if trouble is not None:
        _fence_now(r, trouble)
    elif not obs.db.health.healthy and not obs.intents.paused:
        _fence_now(r, Trigger.DB_UNHEALTHY)
    else:
        _keep_gate_closed(r)
        _renew_if_due(r)
        if obs.intents.paused:
            r.refuse(RefusalReason.PAUSED)
        elif not _overtaken(r) and not _awaiting_peers(r):
            _promotion_step(r)


def _overtaken(r: _Round) -> bool:
    """Step down when a rival holds strictly more data, until our token is in.

    Records can lag (a peer publishes after we raced; after a restart of every agent, their
    records come back one by one): until the token is written, handing the lock back keeps
    the lossless promise. The gate never admitted (PROMOTING), so a token write still waiting
    for a semi-sync ack — which the rival, holding writes we lack, will never give — is only
    an unacknowledged transaction of our own; we rejoin without it (errant: fenced, repaired).
    Ties (applied position, priority, name) never cause a step-down: the data is the same.
    """
    obs = r.obs
    holds = obs.db.holds
    token = obs.lease.token
    if obs.db.fencing_token == token or holds is None:
        return False
    ahead = [rival.record.name for rival in _rivals(r) if rival.holds.rank_key() > holds.rank_key()]
    if not ahead:
        return False
    r.refuse(RefusalReason.PEER_MORE_ADVANCED, ", ".join(ahead))
    r.move(Trigger.OVERTAKEN)
    if token is not None and obs.fence_complete:
        r.emit(ReleaseLock(token, ActionReason.OVERTAKEN))
    return True


def _written_anything(r: _Round) -> bool:
    """Past the promotion's point of no return: mysqld writable, or our fencing token written."""
    db = r.obs.db
    return db.read_only is not True or db.fencing_token == r.obs.lease.token


def _awaiting_peers(r: _Round) -> bool:
    """Before anything is written, wait for every live rival to publish a record that saw our
    lease.

    We raced on records that can be a round old: a replica that received the old primary's
    last (acknowledged) commits may not have published them yet. A rival that sees a new
    holder has stopped receiving from the old one (lossless) and publishes what it holds, which
    ``_overtaken`` then compares. Stale records (their agent is gone or cut off) are not waited
    for; they vanish with their session.
    """
    token = r.obs.lease.token
    if _written_anything(r):
        return False
    waiting = [rival.record.name for rival in _rivals(r)
               if rival.record.info.seen_token != token and _fresh(r, rival.record)]
    if not waiting:
        return False
    r.refuse(RefusalReason.AWAITING_PEERS, ", ".join(waiting))  # PROMOTING wakes up soon anyway
    return True


def _promotion_step(r: _Round) -> None:
    """One observable step of the promotion; the next step waits for its effect."""
    obs = r.obs
    token = obs.lease.token
    assert token is not None  # only called with a held lease
    replication = obs.db.replication
    if replication.source is not None:
        if not replication.relay_log_applied:
            r.emit(WaitRelayLog(r.config.relay_wait_timeout, ActionReason.PROMOTION))
        else:
            r.emit(Promote(r.config.lossless, ActionReason.PROMOTION))
    elif obs.db.read_only is not False:
        # The point of no return: from here on the cooldown of this failover runs.
        r.emit(SetReadOnly(read_only=False, reason=ActionReason.PROMOTION))
        if obs.db.fencing_token != token:
            r.emit(WriteFencingToken(token, ActionReason.PROMOTION))
        r.emit(RecordFailover(ActionReason.FAILOVER_STARTED))
    elif obs.db.fencing_token != token:
        r.emit(WriteFencingToken(token, ActionReason.PROMOTION))
    else:
        r.move(Trigger.PROMOTION_COMPLETE)
        _serve(r)


def _primary(r: _Round) -> None:
    obs = r.obs
    trouble = _lease_trouble(r)
    target = obs.intents.switchover_target
    if trouble is not None:
        if not _retake_lease(r, trouble):
            _fence_now(r, trouble)
    elif obs.intents.paused:
        r.refuse(RefusalReason.PAUSED)
        _renew_if_due(r)
        _serve(r)
    elif not obs.db.health.healthy:
        _fence_now(r, Trigger.DB_UNHEALTHY)
    elif target is not None and target != r.me:
        if _switchover_target_suitable(r, target):
            _fence_now(r, Trigger.SWITCHOVER, switchover_target=target)
        else:
            r.refuse(RefusalReason.SWITCHOVER_TARGET_UNSUITABLE, target)
            _renew_if_due(r)
            _serve(r)
    else:
        _renew_if_due(r)
        _serve(r)


def _retake_lease(r: _Round, trouble: Trigger) -> bool:
    """Failsafe: the DCS came back without our lease (a Consul session invalidated during the
    outage). The promises for the token the gate runs on still bind every member: keep the gate
    on them and take the lock again while the DCS shows it free. The new token goes into mysqld
    before the gate admits under it (``_serve``)."""
    obs = r.obs
    gate = obs.gate
    if trouble is not Trigger.LEASE_LOST or obs.lease.held or not gate.admitting or gate.token is None:
        return False
    until = failsafe.promised_until(obs.failsafe, gate.token, r.config)
    if until is None or r.now >= until or not obs.lock.free:
        return False  # no promises left, or another node holds the lock: fence
    if obs.intents.paused or not obs.db.health.healthy or obs.failsafe.promise_live(r.now):
        return False
    r.emit(AcquireLock(ActionReason.LEASE_RETAKEN))
    r.wake_at(until)
    return True


def _serve(r: _Round) -> None:
    """PRIMARY with a valid lease: keep the gate armed with the current deadline."""
    obs = r.obs
    lease = obs.lease
    deadline = failsafe.effective_deadline(obs.failsafe, lease, r.config)
    assert lease.token is not None and deadline is not None  # valid lease checked by callers
    gate = obs.gate
    if gate.admitting and lease.token not in (gate.token, obs.db.fencing_token):
        # A lease taken back after a DCS outage: its token goes into mysqld first; meanwhile the
        # gate keeps the deadline the promises gave the old token.
        r.emit(WriteFencingToken(lease.token, ActionReason.LEASE_RETAKEN))
    elif not gate.admitting or gate.token != lease.token or gate.deadline != deadline:
        reason = ActionReason.LEASE_EXTENDED if gate.admitting else ActionReason.PRIMARY_READY
        r.emit(AdmitGate(lease.token, deadline, reason))
    _failsafe_upkeep(r, lease.token)
    _sync_discovery(r, DiscoveryTag.PRIMARY, ActionReason.PRIMARY_READY)
    if obs.intents.switchover_target == r.me:
        r.emit(ClearSwitchover(ActionReason.SWITCHOVER_DONE))


def _failsafe_upkeep(r: _Round, token: int) -> None:
    """A serving primary keeps the failsafe list in the DCS current while it can write there,
    and asks its peers for promises while the DCS cannot be asked (docs/failsafe.md)."""
    obs = r.obs
    view = obs.failsafe
    if obs.lock.reachable and obs.lock.holder == r.me:
        live = frozenset(record.name for record in obs.members) | {r.me}
        listed = failsafe.list_to_publish(view, live, token, r.config)
        if listed is not None:
            r.emit(PublishFailsafeMembers(token, tuple(sorted(listed)),
                                          ActionReason.FAILSAFE_MEMBERS_CHANGED))
    due = failsafe.round_due(view, obs.lease, r.now, r.config)
    if due is None:
        return
    if r.now >= due:
        members = tuple(sorted(failsafe.required_members(view, r.me)))
        r.emit(AskPromises(token, members, r.config.ttl, ActionReason.DCS_UNREACHABLE))
    else:
        r.wake_at(due)


def _switchover_target_suitable(r: _Round, target: str | None) -> bool:
    record = None if target is None else r.obs.member(target)
    return (
        record is not None
        and _fresh(r, record)
        and record.info.healthy
        and record.info.role is Role.REPLICA
        and record.info.position is not None
        and record.info.priority > 0
        # A target with writes of its own nobody else has (it was a primary) would not race.
        and not _stays_out_for_own_writes(r, record)
    )


def _fencing(r: _Round) -> None:
    reason = r.state.fenced_reason
    assert reason is not None  # set by every transition into FENCING
    _fencing_steps(r, _FENCE_ACTION_REASON[reason])
    if r.obs.db.read_only is None and not any(isinstance(a, SetReadOnly) for a in r.actions):
        # mysqld could not be asked: ask again, but last. A hung mysqld makes the attempt wait
        # for a connect timeout, and a release that is due must not wait behind it.
        r.emit(SetReadOnly(read_only=True, reason=_FENCE_ACTION_REASON[reason]))


def _fencing_steps(r: _Round, reason: ActionReason) -> None:
    obs = r.obs
    state = r.state
    _fence_actions(r, reason, insist=False)
    _renew_if_due(r)
    if obs.intents.paused:
        r.refuse(RefusalReason.PAUSED)
        return
    lease = obs.lease
    target = state.switchover_target
    overdue = r.now >= state.since + r.config.drain_timeout + r.config.ttl
    if state.fenced_reason is Trigger.SWITCHOVER and (
        obs.intents.switchover_target != target or not _switchover_target_suitable(r, target) or overdue
    ):
        # Withdrawn, or the target can no longer take over (it vanished, or never catches up:
        # it may hold errant GTIDs that its position does not show): waiting for it would
        # leave the cluster without a primary, so take the role back if we still can.
        if _lease_trouble(r) is None and obs.db.health.healthy:
            if obs.intents.switchover_target == target:
                r.emit(ClearSwitchover(ActionReason.SWITCHOVER_FAILED))  # or it starts again
            r.move(Trigger.SWITCHOVER_ABORTED)
            return
        # Cannot take the role back: finish as an ordinary fence.
        r.state = state = replace(state, switchover_target=None)
        target = None
    if not obs.fence_complete:
        r.refuse(RefusalReason.FENCE_INCOMPLETE)
        return
    lease_gone = not lease.held or (
        lease.deadline is not None and r.now >= lease.deadline + r.config.safety_margin
    )
    if lease_gone:
        r.move(Trigger.RELEASED)
        return
    assert lease.token is not None
    if target is not None:
        record = obs.member(target)
        position = obs.db.position
        caught_up = (
            record is not None and _fresh(r, record) and record.info.healthy
            and record.info.position is not None and position is not None
            and record.info.position.covers(position)
        )
        if not caught_up:
            r.refuse(RefusalReason.SWITCHOVER_TARGET_BEHIND, target)
            r.wake_at(state.since + r.config.drain_timeout + r.config.ttl)
            return
        r.emit(ReleaseLock(lease.token, ActionReason.SWITCHOVER))
    else:
        r.emit(ReleaseLock(lease.token, ActionReason.FENCE_COMPLETE))


def _fenced(r: _Round) -> None:
    obs = r.obs
    _fence_actions(r, ActionReason.NOT_PRIMARY, insist=False)
    _detach_lost_source(r)
    _release_unwanted_lease(r)
    if obs.intents.paused:
        r.refuse(RefusalReason.PAUSED)
        return
    primary = _ready_primary(r)
    if primary is None:
        if obs.lock.reachable:
            r.refuse(RefusalReason.NO_PRIMARY_TO_REJOIN)
        else:
            r.refuse(RefusalReason.DCS_UNREACHABLE)
        return
    check = obs.db.replication.errant
    if not obs.db.health.healthy:
        r.refuse(RefusalReason.DB_UNHEALTHY, ", ".join(obs.db.health.reasons))
        if obs.repair.awaiting_restart:  # killed by the fence: what is errant shows after recovery
            _repair(r, ErrantCheck(primary))
    elif check is None or check.against != primary:
        r.refuse(RefusalReason.ERRANT_UNCHECKED, primary)
    elif not check.clean:
        r.refuse(RefusalReason.ERRANT_GTIDS, ",".join(check.gtids))
        r.state = replace(r.state, fenced_reason=Trigger.ERRANT_GTIDS)
        _repair(r, check)
    else:
        r.emit(Repoint(primary, _acknowledges(r), ActionReason.REJOIN))
        r.move(Trigger.REJOINED)


def _repair(r: _Round, check: ErrantCheck) -> None:
    """``[rejoin]``: remove errant transactions that were provably never acknowledged (truncate
    or rebuild), or say why not (the rules are in :mod:`dbfence.agent.rejoin`)."""
    donors = tuple(sorted(m.name for m in r.obs.members if m.name != r.me and m.info.role is Role.REPLICA
                          and m.info.healthy and _fresh(r, m)))
    plan = plan_repair(r.config.rejoin_mode, r.obs.repair, check, r.obs.db.server_id, donors)
    if isinstance(plan, tuple):
        r.refuse(RefusalReason(plan[0].value), plan[1])
    elif plan is not None:
        r.emit(plan)


_HANDLERS = {
    Role.STARTING: _starting,
    Role.REPLICA: _replica,
    Role.CANDIDATE: _candidate,
    Role.PROMOTING: _promoting,
    Role.PRIMARY: _primary,
    Role.FENCING: _fencing,
    Role.FENCED: _fenced,
}

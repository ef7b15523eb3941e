"""A small explicit-state model of a dbfence cluster, driven by the real ``decide``.

The world has 3 nodes, each with a database (history of transactions, read-only flag,
replication source, fencing token), a gate (armed + token + deadline), an agent
process (core state, the lock adapter's view of its lease, actions decided but not yet
executed, paused flag) and a DCS (lock key with TTL lease, fencing token counter,
member records attached to each agent's session, last failover time). Time is a
shared integer clock.

Every event is a non-deterministic choice: an agent observes, decides and executes
the decided actions in order (one step), a client writes through an admitting gate, a replica
catches up, the clock advances (which expires leases), and faults (database crash,
agent pause, agent crash, DCS unreachable from one node) with their recoveries
(database restart, resume, agent restart, heal), and an operator's switchover request
(spending the fault budget too). One more fault splits a step: the
agent decides, then stalls, and executes only later, after time, faults and the other
agents have moved on.

With ``failsafe=True`` the agents run the failsafe (docs/failsafe.md): the DCS can go down
for everyone and come back (leases keep expiring meanwhile: the conservative case), a primary
asks its peers for promises, each request is received (the promise is given and persisted) and
each answer delivered as separate events that may never happen (lost, late, a partition between
two members, a paused agent). Extra invariants: no node decides to race or promote while a
promise it gave is live, and a gate admits only while no other node holds the lock.

Lossless semi-sync is modelled where progress depends on it: a fencing-token write on a node
whose primary-side semi-sync is on waits (invisible) until an attached replica received it.

Safety checks raise :class:`ModelViolationError` with the event trace that led there, and so
does the liveness check (``ticks_to_good``): once faults stop, the fair fault-free schedule
must reach one admitting primary that every other node follows.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
    RebuildNode,
    RecordFailover,
    RegisterDiscovery,
    ReleaseLock,
    RenewLock,
    Repoint,
    SetReadOnly,
    TruncateErrant,
    WaitRelayLog,
    WriteFencingToken,
)
from dbfence.agent.core_config import CoreConfig
from dbfence.agent.decide import decide, race_refusals
from dbfence.agent.failsafe import PromiseRequest, PromiserView, answer_promise
from dbfence.agent.failsafe_view import FailsafeView, GivenPromise, PromiseAnswer, PromiseRound
from dbfence.agent.gtid import BinlogState, Gtid, GtidPosition, candidate_sort_key
from dbfence.agent.observation import (
    DiscoveryTag,
    ErrantCheck,
    GateView,
    HealthVerdict,
    LeaseView,
    LocalDatabase,
    LockView,
    MemberInfo,
    MemberRecord,
    Observation,
    OperatorIntents,
    RepairView,
    ReplicationState,
)
from dbfence.agent.state import Role, State

NAMES = ("n1", "n2", "n3")


_INIT_FIELDS: dict[type, tuple[str, ...]] = {}
_HASH_FIELDS: dict[type, tuple[str, ...]] = {}
_T = TypeVar("_T")


def replace(obj: _T, **changes: Any) -> _T:
    """dataclasses.replace without its per-call introspection (the BFS calls it a lot)."""
    cls = type(obj)
    names = _INIT_FIELDS.get(cls)
    if names is None:
        names = _INIT_FIELDS[cls] = tuple(
            f.name for f in dataclasses.fields(obj) if f.init  # type: ignore[arg-type]
        )
    values = {name: getattr(obj, name) for name in names}
    values.update(changes)
    return cls(**values)


def _cached_hash(self: object) -> int:
    """Hash once per instance: worlds share most sub-objects, BFS hashes them a lot."""
    cached: int | None = self._hash  # type: ignore[attr-defined]
    if cached is None:
        cls = type(self)
        names = _HASH_FIELDS.get(cls)
        if names is None:
            names = _HASH_FIELDS[cls] = tuple(
                f.name for f in dataclasses.fields(self) if f.name != "_hash"  # type: ignore[arg-type]
            )
        cached = hash(tuple(getattr(self, name) for name in names))
        object.__setattr__(self, "_hash", cached)
    return cached


def _term_open(was_open: bool, old: Role, new: Role) -> bool:
    """The term record across a role change, as the repair keeper keeps it: written when a term
    begins (PRIMARY) and when a primary fences, removed when the node serves again as a replica
    (a rejoin) or a promotion steps down; primary again starts a new one."""
    if new is Role.PRIMARY or (new is Role.FENCING and old in (Role.PRIMARY, Role.PROMOTING)):
        return True
    if old in (Role.FENCED, Role.FENCING) and new is Role.REPLICA:
        return False
    if old is Role.PROMOTING and new is not Role.FENCING:
        return False
    return was_open


class ModelViolationError(AssertionError):
    def __init__(self, message: str, trace: tuple[str, ...]) -> None:
        super().__init__(message + "\ntrace:\n  " + "\n  ".join(trace))
        self.trace = trace


@dataclass(frozen=True, slots=True)
class Db:
    alive: bool = True
    history: tuple[str, ...] = ()
    read_only: bool = True
    source: str | None = None
    receiving: bool = True  # the IO thread runs (False after DetachSource)
    token: int | None = None
    # Lossless semi-sync, primary side: on after Promote and while PRIMARY, off after Repoint;
    # a fence leaves it on (turning it off would release waiting commits with an OK).
    semi_sync: bool = False
    # A fencing-token write that is in the binlog but waits for a semi-sync acknowledgement:
    # invisible (not committed) until an acknowledging replica has received it.
    unacked_token: int | None = None
    unacked_since: int | None = None  # when that write started waiting (the executor's release)
    # Issue 15 (fence by crash): SIGKILLed by its own agent's fence; only the repair starts it.
    killed_by_fence: bool = False
    # Soak seed 443: its crash recovery fails for good (a corrupt redo log): it never starts
    # again, and needs an operator's rebuild. Set by a script only ("db-break <node>").
    broken: bool = False
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)
    __hash__ = _cached_hash


@dataclass(frozen=True, slots=True)
class Gate:
    armed: bool = False
    token: int | None = None
    deadline: float | None = None
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)
    __hash__ = _cached_hash

    def admits(self, now: float) -> bool:
        """Exactly what the gate does per chunk: armed and before its deadline."""
        return self.armed and self.deadline is not None and now < self.deadline


@dataclass(frozen=True, slots=True)
class Memory:
    """The failsafe adapter's memory in the agent process (lost when it crashes): what it last
    read from the DCS, since when renewals fail as unreachable, its current promise round."""

    last_holder: str | None = None
    last_token: int | None = None
    listed: frozenset[str] | None = None
    listed_token: int | None = None
    membership: frozenset[str] = frozenset()
    unreachable_since: float | None = None
    round: PromiseRound | None = None
    complete: PromiseRound | None = None  # the latest round every member asked answered yes
    unreceived: frozenset[str] = frozenset()  # asked, request not (yet) received
    undelivered: tuple[PromiseAnswer, ...] = ()  # given, answer not (yet) back
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)
    __hash__ = _cached_hash


@dataclass(frozen=True, slots=True)
class Agent:
    state: State
    lease: LeaseView = field(default_factory=LeaseView)
    pending: tuple[Action, ...] = ()
    paused: bool = False
    memory: Memory = Memory()
    # Checker bookkeeping: the members whose record showed what they hold when this agent took
    # the lock (check_keeps_acknowledged judges the writes of those); None: not taken.
    raced_seeing: frozenset[str] | None = None
    raced_listed: frozenset[str] | None = None  # the members with a live record then (check_new_primaries)
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)
    __hash__ = _cached_hash


@dataclass(frozen=True, slots=True)
class Node:
    db: Db = Db()
    gate: Gate = Gate()
    agent: Agent | None = None
    discovery: DiscoveryTag | None = None
    partitioned: bool = False
    promise: GivenPromise | None = None  # persisted with fsync: survives the agent
    # The repair keeper's term record (dbfence/agent/term_record.py, fsynced: survives the agent):
    # a term as primary, or its fence, not spent yet. An agent restarted with it fences that same
    # run of mysqld by crash, as the agent that saw it leave PRIMARY would (soak seed 423).
    term_open: bool = False
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)
    __hash__ = _cached_hash


@dataclass(frozen=True, slots=True)
class Record:
    info: MemberInfo
    last_seen: float
    session_expiry: float
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)
    __hash__ = _cached_hash


@dataclass(frozen=True, slots=True)
class Dcs:
    holder: str | None = None
    token: int | None = None
    expiry: float = 0.0
    next_token: int = 1
    records: tuple[tuple[str, Record], ...] = ()
    last_failover: float | None = None
    listed: frozenset[str] | None = None  # the failsafe member list, not attached to a lease
    listed_token: int | None = None
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)
    __hash__ = _cached_hash

    def holder_at(self, now: float) -> str | None:
        return self.holder if self.holder is not None and now < self.expiry else None

    def live_records(self, now: float) -> tuple[tuple[str, Record], ...]:
        return tuple((name, rec) for name, rec in self.records if now < rec.session_expiry)

    def with_record(self, name: str, record: Record | None) -> Dcs:
        others = tuple((n, r) for n, r in self.records if n != name)
        if record is None:
            return replace(self, records=others)
        return replace(self, records=tuple(sorted((*others, (name, record)), key=lambda item: item[0])))

    def record(self, name: str) -> Record | None:
        for n, rec in self.records:
            if n == name:
                return rec
        return None


@dataclass(frozen=True, slots=True)
class World:
    now: int
    nodes: tuple[Node, ...]
    dcs: Dcs
    faults_left: int
    writes_left: int
    switchover: str | None = None
    dcs_down: bool = False
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)
    __hash__ = _cached_hash


@dataclass(frozen=True, slots=True)
class ModelLimits:
    max_time: int = 8
    faults: int = 2
    writes: int = 1
    depth: int = 12


def model_config(name: str, *, lossless: bool = True, rejoin_mode: str = "manual",
                 failsafe: bool = False) -> CoreConfig:
    return CoreConfig(
        node_name=name, ttl=3.0, safety_margin=1.0, renew_interval=1.0, max_lag_seconds=1.0,
        cooldown=0.0, priority=100, lossless=lossless, poll_interval=1.0, settle_interval=0.0,
        member_stale_after=3.0, publish_interval=2.0, relay_wait_timeout=0.5, rejoin_mode=rejoin_mode,
        failsafe=failsafe,
    )


def position_of(history: tuple[str, ...]) -> GtidPosition:
    if not history:
        return GtidPosition()
    return GtidPosition((Gtid(0, server_id(history[-1]), len(history)),))


@functools.cache
def binlog_state_of(history: tuple[str, ...]) -> BinlogState:
    """Each writer's last transaction: the model's one domain, sequence number = place in history."""
    return BinlogState.merged(Gtid(0, server_id(writer), seq) for seq, writer in enumerate(history, start=1))


def server_id(name: str) -> int:
    return NAMES.index(name) + 1


def is_prefix(short: tuple[str, ...], long: tuple[str, ...]) -> bool:
    return long[: len(short)] == short


#: Ticks a fencing-token write waits for an ack before the executor ends the wait (it then
#: commits); the adapter's FencingTokenWriter.ack_wait_s, shorter than the lease TTL (3 ticks).
TOKEN_ACK_WAIT = 2
#: Ticks it waits while no replica is attached to it at all (FencingTokenWriter.alone_wait_s:
#: nobody connected can acknowledge it).
TOKEN_ALONE_WAIT = 1


def _commit_unacked(db: Db) -> Db:
    """The semi-sync wait of the token write ends (ack, semi-sync off, crash recovery): committed."""
    if db.unacked_token is None:
        return db
    return replace(db, token=db.unacked_token, unacked_token=None, unacked_since=None)


def acknowledge(world: World) -> World:
    """A token write waiting for semi-sync completes once an acknowledging replica (every node of
    the model has priority > 0) attached to it has received it."""
    if all(node.db.unacked_token is None for node in world.nodes):
        return world
    nodes = list(world.nodes)
    for index, node in enumerate(nodes):
        db = node.db
        if db.unacked_token is None or not db.alive:
            continue
        name = NAMES[index]
        if any(other.db.alive and other.db.source == name and other.db.receiving
               and is_prefix(db.history, other.db.history) for other in nodes if other is not node):
            nodes[index] = replace(node, db=_commit_unacked(db))
    return replace(world, nodes=tuple(nodes))


def _attached_to(world: World, name: str) -> bool:
    """Some node receives from ``name`` (what Rpl_semi_sync_master_clients counts)."""
    return any(node.db.alive and node.db.source == name and node.db.receiving for node in world.nodes)


class Model:
    """Transition relation and safety checks; ``explore`` runs a BFS over it."""

    def __init__(self, limits: ModelLimits, *, lossless: bool = True, rejoin_mode: str = "manual",
                 rebuild_approved: bool = False, failsafe: bool = False,
                 fence_by_crash: bool = False) -> None:
        self.limits = limits
        # Issue 16: agents publish their binlog state (the takeover without a primary needs it);
        # False plays agents that do not, as before the rule.
        self.binlog_states = True
        # Issue 16 (soak, seed 301): a mysqld the fence killed publishes the binlog state it had
        # at the kill while it stays down; False plays agents that do not.
        self.killed_states = True
        # Issue 16 (soak, seed 443): a mysqld down after a crash of its own, not run since,
        # publishes the binlog state its files hold (RepairView.binlog_state_on_disk); False plays
        # agents that do not.
        self.crashed_states = True
        # Issue 15: the repair keeper's fence by crash (truncate mode), see _crashes_on_fence.
        self.fence_by_crash = fence_by_crash
        self.crash_fences = 0
        self.failsafe = failsafe
        self.promises_given = 0
        self.extensions = 0  # decisions that admitted beyond the lease deadline on promises
        self.configs = {name: model_config(name, lossless=lossless, rejoin_mode=rejoin_mode,
                                           failsafe=failsafe) for name in NAMES}
        self.lossless = lossless
        # The evidence a fenced primary recorded: the model's lossless cluster never falls back.
        self.repair_view = RepairView(evidence_problem=None if lossless else "asynchronous replication",
                                      rebuild_approved=rebuild_approved)
        self.truncations = 0
        self.rebuilds = 0
        self.ttl = self.configs[NAMES[0]].ttl
        self.span = self.configs[NAMES[0]].lease_span
        self.promotions = 0
        self.liveness_memo = {}
        self.acquisitions_checked = 0
        self.takeovers = 0  # issue 16: lock taken without a primary, every other member fenced
        self.repairs_without_primary = 0  # soak seed 403: a killed mysqld repaired to take over
        # Seed 403: any new primary, raced or taken over, must hold every write another node holds
        # but that node's own unreceived ones (judged on the histories, as check_takeover), of the
        # members whose record showed what they hold when it took the lock; unlike
        # check_keeps_acknowledged, also once their record is gone. What it found and what is out
        # of its scope: test_core_model_check_new_primaries.py.
        self.check_new_primaries = True
        self.promotions_checked = 0  # promotions judged by check_keeps_acknowledged
        self.token_waits_ended = 0  # token writes committed unacknowledged after TOKEN_ACK_WAIT
        #: None: the token waits for TOKEN_ACK_WAIT even with no replica attached (the rule off).
        self.token_alone_wait: int | None = TOKEN_ALONE_WAIT
        self.token_alone_ends = 0  # of token_waits_ended, those ended early: nobody attached

    # ------------------------------------------------------------------ observation

    def observe(self, world: World, index: int) -> Observation:
        name = NAMES[index]
        node = world.nodes[index]
        assert node.agent is not None
        now = float(world.now)
        dcs = world.dcs
        holder = dcs.holder_at(now)
        lease = node.agent.lease
        lock_unknown = node.partitioned or world.dcs_down
        if lock_unknown:
            lock = LockView(reachable=False)
            members: tuple[MemberRecord, ...] = ()
            last_failover = None
        else:
            if lease.held and (holder != name or dcs.token != lease.token):
                lease = LeaseView()
            lock = LockView(reachable=True, holder=holder, token=dcs.token if holder else None)
            members = tuple(MemberRecord(rec.info, rec.last_seen) for _, rec in dcs.live_records(now))
            last_failover = dcs.last_failover
        db = node.db
        if db.alive:
            errant = None
            if holder is not None and holder != name and self.reachable(world, index):
                theirs = world.nodes[NAMES.index(holder)].db
                if theirs.alive:
                    common = 0
                    while (common < len(db.history) and common < len(theirs.history)
                           and db.history[common] == theirs.history[common]):
                        common += 1
                    extra = tuple(
                        f"0-{server_id(writer)}-{seq}"
                        for seq, writer in enumerate(db.history[common:], start=common + 1)
                    )
                    errant = ErrantCheck(holder, extra)
            local = LocalDatabase(
                health=HealthVerdict(True),
                read_only=db.read_only,
                position=position_of(db.history),
                binlog_state=binlog_state_of(db.history) if self.binlog_states else None,
                server_id=server_id(name),
                fencing_token=db.token,
                replication=ReplicationState(
                    source=db.source, running=db.source is not None and db.receiving,
                    receiving=db.source is not None and db.receiving, relay_log_applied=True,
                    lag_seconds=0.0, errant=errant,
                    source_connected=self.source_connected(world, index),
                ),
            )
        else:
            local = LocalDatabase(
                health=HealthVerdict(False, ("mysqld down",)), read_only=None, position=None,
                server_id=None, fencing_token=None,
                replication=ReplicationState(source=db.source, running=False, lag_seconds=None),
            )
        gate = node.gate
        memory = self.remembered(world, index)
        view = FailsafeView(
            dcs_unreachable_since=memory.unreachable_since, listed=memory.listed,
            listed_token=memory.listed_token, membership=memory.membership,
            last_round=memory.round, complete_round=memory.complete, given=node.promise,
        )
        return Observation(
            now=now, lease=lease, lock=lock, members=members, db=local,
            gate=GateView(admitting=gate.armed, token=gate.token, deadline=gate.deadline),
            discovery=node.discovery, last_failover_at=last_failover,
            # Intents are cached by the adapter: a DCS blip does not withdraw them.
            intents=OperatorIntents(switchover_target=world.switchover),
            repair=self._repair_view(node.db, name),
            failsafe=view,
            # The DCS history is empty until the first primary records its election.
            new_cluster=None if lock_unknown else dcs.last_failover is None,
        )

    def _repair_view(self, db: Db, name: str) -> RepairView:
        """A killed mysqld awaits its repair; its agent read the binlog state just before the kill
        (the history it keeps while down: nothing is added to it, recovery removes the in-doubt)."""
        if not db.killed_by_fence:
            if db.alive or not (self.binlog_states and self.crashed_states):
                return self.repair_view
            # Down after a crash of its own: its binlog files hold its history (and a commit that
            # awaited an ack: it is in the binlog), which recovery may only cut.
            return replace(self.repair_view, binlog_state_on_disk=binlog_state_of(db.history),
                           server_id_on_disk=server_id(name))
        if not (self.binlog_states and self.killed_states):
            return replace(self.repair_view, awaiting_restart=True)
        return replace(self.repair_view, awaiting_restart=True,
                       binlog_state_at_kill=binlog_state_of(db.history), server_id_at_kill=server_id(name))

    def source_connected(self, world: World, index: int) -> bool:
        """The IO thread is connected: its source's mysqld is alive (no link faults modelled)."""
        db = world.nodes[index].db
        return (db.source is not None and db.receiving
                and world.nodes[NAMES.index(db.source)].db.alive)

    def reachable(self, world: World, index: int) -> bool:
        return not world.dcs_down and not world.nodes[index].partitioned

    def remembered(self, world: World, index: int) -> Memory:
        """The adapter's memory after reading the DCS now (unchanged when it cannot)."""
        agent = world.nodes[index].agent
        assert agent is not None
        memory = agent.memory
        if not self.failsafe or not self.reachable(world, index):
            return memory  # without failsafe nothing reads it: keep the state space as it was
        now = float(world.now)
        dcs = world.dcs
        holder = dcs.holder_at(now)
        live = frozenset(name for name, _ in dcs.live_records(now))
        return replace(memory, last_holder=holder, last_token=dcs.token if holder else None,
                       listed=dcs.listed, listed_token=dcs.listed_token,
                       membership=live | (dcs.listed or frozenset()))

    # ------------------------------------------------------------------ safety checks

    def check_world(self, world: World, trace: tuple[str, ...]) -> None:
        now = float(world.now)
        admitting = [NAMES[i] for i, node in enumerate(world.nodes) if node.gate.admits(now)]
        if len(admitting) > 1:
            raise ModelViolationError(f"two gates admitting at t={now}: {admitting}", trace)
        holder = world.dcs.holder_at(now)
        for name in admitting:
            # Without failsafe an admitting gate's lease is always alive in the DCS; with it, a
            # primary may outlive its lease on promises, but never while another node holds it.
            if holder != name and (not self.failsafe or holder is not None):
                raise ModelViolationError(f"{name} admits at t={now} but the DCS lock is {holder!r}", trace)

    def check_acquire_decision(self, obs: Observation, name: str, trace: tuple[str, ...]) -> None:
        """A node decides to race only as the most advanced healthy candidate it can see."""
        self.acquisitions_checked += 1
        config = self.configs[name]
        position, holds = obs.db.position, obs.db.holds
        if position is None or holds is None or not obs.db.health.healthy:
            raise ModelViolationError(f"{name} races without a healthy database", trace)
        mine = candidate_sort_key(holds, position, config.priority, name)
        for record in obs.members:
            info = record.info
            if record.name == name or not info.healthy or info.position is None or info.holds is None:
                continue
            if info.role not in (Role.STARTING, Role.REPLICA, Role.CANDIDATE, Role.PROMOTING):
                continue
            if self._sits_on_unacknowledged_own_write(obs, name, record):
                continue
            if obs.intents.switchover_target == name:
                # The operator's choice wins ties; it still never overtakes more data.
                behind = info.holds.rank_key() > holds.rank_key()
            else:
                behind = candidate_sort_key(info.holds, info.position, info.priority, info.name) > mine
            if behind:
                raise ModelViolationError(
                    f"{name} at {position} races behind {record.name} at {info.position}", trace
                )

    @staticmethod
    def _sits_on_unacknowledged_own_write(obs: Observation, observer: str, record: MemberRecord) -> bool:
        """The peer's last transaction is its own and no other node reached it (never acknowledged
        in lossless mode), and it cannot race with it: some other node's last transaction is
        another server's, so the peer's history may have forked. Racing past it loses nothing."""
        info = record.info
        own = info.position.gtids[0] if info.position is not None and info.position.gtids else None
        if own is None or own.server_id != info.server_id or info.holds != info.position:
            return False
        others = [obs.db.holds] + [other.info.holds for other in obs.members
                                   if other.name not in (record.name, observer)]
        if any(theirs is not None and theirs.gtids and theirs.gtids[0].seq_no == own.seq_no
               and theirs.gtids[0].server_id != own.server_id for theirs in others):
            return True  # another server's transaction at the same sequence number: forked
        if any(theirs is not None and theirs.gtids
               and (theirs.gtids[0].seq_no > own.seq_no or theirs.gtids[0] == own) for theirs in others):
            return False  # reached (or passed) by someone: no claim here
        return any(theirs is None or (theirs.gtids and theirs.gtids[0].server_id != own.server_id)
                   for theirs in others)

    def check_takeover(self, world: World, index: int, *, counted: bool = True,
                       holders: frozenset[str] | None = None, listed: frozenset[str] | None = None) -> None:
        """Issue 16: a node that takes the lock without a primary (every other member fenced)
        holds every write another node holds, but a node's own writes that no third node received
        (never acknowledged). Judged on the histories themselves, not on what the records say;
        a node without an agent is out of scope (no record shows what it holds), as for a race,
        and so is a holder not in ``holders`` and a third node not in ``listed`` (when given)."""
        self.takeovers += counted
        mine = world.nodes[index].db.history
        for other_index, other in enumerate(world.nodes):
            if other_index == index or other.agent is None:
                continue
            if holders is not None and NAMES[other_index] not in holders:
                continue
            theirs = other.db.history
            for seq in range(len(theirs)):
                if is_prefix(theirs[: seq + 1], mine):
                    continue
                write = theirs[: seq + 1]
                received = [NAMES[third] for third, node in enumerate(world.nodes)
                            if third not in (index, other_index) and is_prefix(write, node.db.history)
                            and (listed is None or NAMES[third] in listed)]
                if theirs[seq] != NAMES[other_index] or received:
                    raise ModelViolationError(
                        f"{NAMES[index]} takes over at {mine} without {NAMES[other_index]}'s {theirs} "
                        f"(write {seq + 1} by {theirs[seq]}, also held by {received}): maybe acknowledged",
                        self._trace)

    def _known_records(self, world: World, observer: str) -> frozenset[str]:
        """Members whose live, fresh record shows what they hold (position, or state at a kill)."""
        now = float(world.now)
        stale_after = self.configs[observer].member_stale_after
        return frozenset(
            name for name, record in world.dcs.live_records(now)
            if now - record.last_seen <= stale_after
            and (record.info.position is not None or record.info.binlog_state_at_kill is not None))

    def check_keeps_acknowledged(self, world: World, index: int) -> None:
        """Lossless: a node that turns writable to promote (the promotion's point of no return:
        until then it may step down, its token an unacknowledged write of its own) holds every write
        that may have been acknowledged, i.e. that a node other than its writer received (AFTER_SYNC
        semi-sync answers the client once a replica has it). Judged on the histories themselves
        (a down mysqld keeps its history) for the writes a member holds whose record showed what it
        holds (its position, or its state at a fence's kill) when this node took the lock and still
        does, received by any member with a record (live and fresh), a down mysqld too (soak seed
        401). Out of scope, as for a race: members without a record then (never seen is not seen),
        and writes that only members of unknown position hold (a primary and a replica both down:
        nothing the others can see shows the write)."""
        agent = world.nodes[index].agent
        if not self.lossless or agent is None:
            return
        self.promotions_checked += 1
        now = float(world.now)
        config = self.configs[NAMES[index]]
        seen = {name for name, record in world.dcs.live_records(now)
                if now - record.last_seen <= config.member_stale_after}
        known = self._known_records(world, NAMES[index]) & (agent.raced_seeing or frozenset())
        mine = world.nodes[index].db.history
        for other_index, other in enumerate(world.nodes):
            if other_index == index or NAMES[other_index] not in known:
                continue
            theirs = other.db.history
            for seq in range(len(theirs)):
                write = theirs[: seq + 1]
                if is_prefix(write, mine):
                    continue
                received = [NAMES[third] for third, node in enumerate(world.nodes)
                            if NAMES[third] != theirs[seq] and NAMES[third] in seen
                            and is_prefix(write, node.db.history)]
                if received:
                    raise ModelViolationError(
                        f"{NAMES[index]} turns writable at {mine} without write {seq + 1} by {theirs[seq]} "
                        f"that {received} received (maybe acknowledged): lost", self._trace)

    def check_bound_by_promise(self, before: State, after: State, actions: tuple[Action, ...],
                               name: str) -> None:
        """A member bound by a live promise neither races nor promotes."""
        if any(isinstance(action, AcquireLock) for action in actions):
            raise ModelViolationError(f"{name} races while a promise it gave is live", self._trace)
        promotes = any(isinstance(action, Promote)
                       or (isinstance(action, SetReadOnly) and not action.read_only) for action in actions)
        if promotes or (after.role is Role.PROMOTING and before.role is not Role.PROMOTING):
            raise ModelViolationError(f"{name} promotes while a promise it gave is live", self._trace)

    def check_promotion(self, obs: Observation, name: str, trace: tuple[str, ...]) -> None:
        """On winning and on completing a promotion, no healthy candidate it can see has more
        data (ties may go either way: the data is the same)."""
        position = obs.db.position
        if position is None:
            raise ModelViolationError(f"{name} promotes without a known position", trace)
        for record in obs.members:
            info = record.info
            if (record.name != name and info.healthy and info.position is not None
                    and info.role in (Role.STARTING, Role.REPLICA, Role.CANDIDATE)
                    and info.position.rank_key() > position.rank_key()
                    and not self._sits_on_unacknowledged_own_write(obs, name, record)):
                raise ModelViolationError(
                    f"{name} at {position} promotes behind {record.name} at {info.position}", trace
                )

    # ------------------------------------------------------------------ events

    def successors(self, world: World) -> Iterator[tuple[str, World]]:
        for label, successor in self._successors(world):
            yield label, acknowledge(successor)

    def _successors(self, world: World) -> Iterator[tuple[str, World]]:
        now = float(world.now)
        for index, node in enumerate(world.nodes):
            name = NAMES[index]
            agent = node.agent
            if agent is not None and not agent.paused:
                if not agent.pending:
                    yield f"step {name}", self._execute(self._decide(world, index), index)
                    if world.faults_left:
                        # Fault: the agent stalls between deciding and acting; time,
                        # faults and the other agents may move on before it executes.
                        stalled = replace(world, faults_left=world.faults_left - 1)
                        yield f"decide {name}", self._decide(stalled, index)
                else:
                    yield f"execute {name}", self._execute(world, index)
            if node.gate.admits(now) and node.db.alive and not node.db.read_only and world.writes_left:
                db = replace(node.db, history=(*node.db.history, name))
                yield f"write {name}", self._set_node(
                    replace(world, writes_left=world.writes_left - 1), index, replace(node, db=db)
                )
            if node.db.alive and node.db.source is not None and node.db.receiving:
                source = world.nodes[NAMES.index(node.db.source)].db
                if (source.alive and len(source.history) > len(node.db.history)
                        and is_prefix(node.db.history, source.history)):
                    db = replace(node.db, history=source.history)
                    yield f"replicate {name}", self._set_node(world, index, replace(node, db=db))
            # recoveries are free, faults spend the budget
            # The fence's kill: only the repair starts it; a broken one never starts again.
            if not node.db.alive and not node.db.killed_by_fence and not node.db.broken:
                # Crash recovery commits what the binlog holds, a commit that awaited an ack too.
                db = replace(_commit_unacked(node.db), alive=True, read_only=True)
                # Another run of mysqld: the term record no longer speaks for it (no crash fence).
                restarted = replace(node, db=db, term_open=False)
                yield f"db-restart {name}", self._set_node(world, index, restarted)
            if agent is None:
                fresh = Agent(State.initial(now))
                yield f"agent-restart {name}", self._set_node(world, index, replace(node, agent=fresh))
            elif agent.paused:
                yield f"agent-resume {name}", self._set_node(
                    world, index, replace(node, agent=replace(agent, paused=False))
                )
            if node.partitioned:
                yield f"heal {name}", self._set_node(world, index, replace(node, partitioned=False))
            if world.faults_left:
                spent = replace(world, faults_left=world.faults_left - 1)
                if node.db.alive:
                    db = replace(node.db, alive=False)
                    yield f"db-crash {name}", self._set_node(spent, index, replace(node, db=db))
                if agent is not None:
                    # The gate lives in the agent process: it dies with it.
                    crashed = replace(node, agent=None, gate=Gate(), discovery=None)
                    yield f"agent-crash {name}", self._set_node(spent, index, crashed)
                    if not agent.paused:
                        yield f"agent-pause {name}", self._set_node(
                            spent, index, replace(node, agent=replace(agent, paused=True))
                        )
                if not node.partitioned and not any(other.partitioned for other in world.nodes):
                    yield f"partition {name}", self._set_node(spent, index, replace(node, partitioned=True))
        if self.failsafe:
            yield from self._failsafe_events(world)
        if world.switchover is None and world.faults_left:
            for name in NAMES:
                yield f"switchover {name}", replace(world, switchover=name, faults_left=world.faults_left - 1)
        if world.now < self.limits.max_time:
            yield "clock", replace(world, now=world.now + 1)

    def _failsafe_events(self, world: World) -> Iterator[tuple[str, World]]:
        """DCS outage and return; promise requests received and answers delivered (each may
        never happen: lost, late, a partition between two members, a paused agent)."""
        if world.dcs_down:
            # Leases kept expiring meanwhile (a Consul session invalidated; the worst case) ...
            yield "dcs-up", replace(world, dcs_down=False)
            dcs = world.dcs
            if dcs.holder is not None:
                # ... or etcd, electing a leader when quorum returns, refreshed every lease.
                kept = replace(dcs, expiry=max(dcs.expiry, world.now + self.ttl))
                yield "dcs-up-kept", replace(world, dcs_down=False, dcs=kept)
        elif world.faults_left:
            yield "dcs-down", replace(world, dcs_down=True, faults_left=world.faults_left - 1)
        now = float(world.now)
        for asker_index, asker_node in enumerate(world.nodes):
            asker = asker_node.agent
            if asker is None or asker.memory.round is None:
                continue
            asker_name = NAMES[asker_index]
            current = asker.memory.round
            for name in sorted(asker.memory.unreceived):
                index = NAMES.index(name)
                node = world.nodes[index]
                if node.agent is None or node.agent.paused:
                    continue  # its HTTP API is gone or frozen with it: no answer
                request = PromiseRequest(asker_name, current.token, self.ttl)
                memory = self.remembered(world, index)
                lock = self.observe(world, index).lock
                view = PromiserView(node.agent.state.role, node.agent.lease, lock,
                                    memory.last_holder, memory.last_token)
                decided = answer_promise(request, view, self.configs[name])
                asked = replace(asker.memory, unreceived=asker.memory.unreceived - {name})
                if decided.granted is not None:
                    self.promises_given += 1
                    until = now + decided.granted
                    if node.promise is None or node.promise.until < until:
                        node = replace(node, promise=GivenPromise(asker_name, current.token, until))
                    asked = replace(asked, undelivered=(
                        *asked.undelivered, PromiseAnswer(name, decided.granted, f"{current.sent_at}")))
                changed = self._set_node(world, index, node)
                changed = self._set_node(changed, asker_index, replace(
                    changed.nodes[asker_index], agent=replace(asker, memory=asked)))
                yield f"promise {name}->{asker_name}", changed
            if asker.paused:
                continue
            for answer in asker.memory.undelivered:
                rest = tuple(a for a in asker.memory.undelivered if a != answer)
                memory = replace(asker.memory, undelivered=rest)
                if answer.detail == f"{current.sent_at}":  # a late answer to an older round is dropped
                    grown = replace(current, answers=(*current.answers, answer))
                    memory = replace(memory, round=grown)
                    if grown.asked <= grown.granted().keys():
                        memory = replace(memory, complete=grown)
                yield f"reply {answer.member}->{asker_name}", self._set_node(
                    world, asker_index, replace(asker_node, agent=replace(asker, memory=memory)))

    def _set_node(self, world: World, index: int, node: Node) -> World:
        nodes = list(world.nodes)
        nodes[index] = node
        return replace(world, nodes=tuple(nodes))

    def _decide(self, world: World, index: int) -> World:
        name = NAMES[index]
        node = world.nodes[index]
        assert node.agent is not None
        obs = self.observe(world, index)
        decision = decide(obs, node.agent.state, self.configs[name])
        if obs.failsafe.promise_live(obs.now):
            self.check_bound_by_promise(node.agent.state, decision.state, decision.actions, name)
        if (decision.state.role is Role.PRIMARY and obs.lease.deadline is not None
                and obs.now >= obs.lease.deadline):
            self.extensions += 1
        if (any(isinstance(action, AcquireLock) for action in decision.actions)
                and node.agent.state.role is not Role.PRIMARY):  # a primary retaking its lease
            self.check_acquire_decision(obs, name, self._trace)
        if any(isinstance(action, AcquireLock) for action in decision.actions) and (
                node.agent.state.role is Role.FENCED
                or (node.agent.state.role is not Role.PRIMARY and race_refusals(obs, self.configs[name]))):
            self.check_takeover(world, index)
        if node.agent.state.role is not Role.PROMOTING and decision.state.role is Role.PROMOTING:
            self.promotions += 1
            self.check_promotion(obs, name, self._trace)
        if decision.state.role is Role.PRIMARY and node.agent.state.role is Role.PROMOTING:
            self.check_promotion(obs, name, self._trace)
            if self.lossless and self.check_new_primaries:
                # The writes of the members whose record showed what they hold when it took the lock,
                # received by a member with a live record then (gone since or not): what the race
                # could see. An adopted primary took no lock: every member.
                self.check_takeover(world, index, counted=False, holders=node.agent.raced_seeing,
                                    listed=node.agent.raced_listed)
        agent = replace(node.agent, state=decision.state, lease=obs.lease, pending=decision.actions,
                        memory=self.remembered(world, index))
        node = replace(node, term_open=_term_open(node.term_open, node.agent.state.role, decision.state.role))
        dcs = world.dcs
        if self.reachable(world, index):
            # The adapter's session keepalive rides on every successful DCS round trip.
            record = dcs.record(name)
            if record is not None and world.now < record.session_expiry:
                dcs = dcs.with_record(name, replace(record, session_expiry=world.now + self.ttl))
        return replace(self._set_node(world, index, replace(node, agent=agent)), dcs=dcs)

    def _execute(self, world: World, index: int) -> World:
        node = world.nodes[index]
        assert node.agent is not None
        for action in node.agent.pending:
            world = self._apply(world, index, action)
        node = world.nodes[index]
        assert node.agent is not None
        db = node.db
        if self.lossless and node.agent.state.role is Role.PRIMARY and db.alive and not db.semi_sync:
            # The executor's reconcile_semi_sync: a primary keeps lossless semi-sync on.
            db = replace(db, semi_sync=True)
        return self._set_node(world, index, replace(node, db=db, agent=replace(node.agent, pending=())))

    def _apply(self, world: World, index: int, action: Action) -> World:
        name = NAMES[index]
        node = world.nodes[index]
        agent = node.agent
        assert agent is not None
        now = float(world.now)
        dcs = world.dcs
        reachable = self.reachable(world, index)
        holder = dcs.holder_at(now)
        db = node.db
        if isinstance(action, AcquireLock):
            if node.promise is not None and now < node.promise.until:
                pass  # the executor re-checks the promise book before it sends an acquire
            elif reachable and holder is None:
                token = dcs.next_token
                dcs = replace(dcs, holder=name, token=token, expiry=now + self.ttl, next_token=token + 1)
                agent = replace(agent, lease=LeaseView(True, token, now + self.span),
                                raced_seeing=self._known_records(world, name),
                                raced_listed=frozenset(dict(dcs.live_records(now))))
        elif isinstance(action, RenewLock):
            if reachable:
                if holder == name and dcs.token == action.token:
                    dcs = replace(dcs, expiry=now + self.ttl)
                    agent = replace(agent, lease=LeaseView(True, action.token, now + self.span),
                                    memory=replace(agent.memory, unreachable_since=None))
                else:
                    agent = replace(agent, lease=LeaseView())
            elif self.failsafe and agent.memory.unreachable_since is None:
                # The lease keeper classifies the failure: the DCS cannot be asked.
                agent = replace(agent, memory=replace(agent.memory, unreachable_since=now))
        elif isinstance(action, ReleaseLock):
            if node.gate.admits(now):
                raise ModelViolationError(f"{name} releases the lock while its gate admits", self._trace)
            if db.alive and not db.read_only:
                raise ModelViolationError(f"{name} releases the lock while mysqld is writable", self._trace)
            if reachable:
                if holder == name and dcs.token == action.token:
                    dcs = replace(dcs, holder=None, token=None)
                agent = replace(agent, lease=LeaseView())
        elif isinstance(action, AdmitGate):
            node = replace(node, gate=Gate(True, action.token, action.deadline))
        elif isinstance(action, BlockGate):
            node = replace(node, gate=Gate())
        elif isinstance(action, SetReadOnly):
            if not action.read_only and db.alive and db.read_only:
                self.check_keeps_acknowledged(world, index)
            if self._crashes_on_fence(world, index, action):
                db = replace(db, alive=False, killed_by_fence=True)
                self.crash_fences += 1
            elif db.alive:
                db = replace(db, read_only=action.read_only)
        elif isinstance(action, Promote):
            if db.alive and db.source is not None:
                # Like the adapter: semi-sync on, then the executor starts the token write, which
                # (lossless) waits for an ack like any commit, so a crash can remove it (issue 15).
                db = replace(db, source=None, semi_sync=self.lossless)
                if agent.lease.token is not None:
                    db = self._write_token(world, db, name, agent.lease.token)
        elif isinstance(action, Repoint):
            if db.alive:
                source = world.nodes[NAMES.index(action.primary)].db
                if source.alive and not is_prefix(db.history, source.history):
                    raise ModelViolationError(
                        f"{name} rejoins {action.primary} with errant transactions "
                        f"{db.history} vs {source.history}", self._trace,
                    )
                # The adapter turns a former primary's semi-sync off: a waiting commit completes.
                db = replace(_commit_unacked(db), source=action.primary, receiving=True, semi_sync=False)
                node = replace(node, term_open=False)  # follows: the keeper's on_followed spends it
        elif isinstance(action, TruncateErrant):
            # No primary (soak seed 403): judged against the other members, recovery cuts what no
            # other node holds (the commits that waited for an ack), the same check as ever.
            against = action.primary or self._closest(world, index)
            if db.alive:
                db = self._truncate(world, index, against)
            elif db.killed_by_fence:
                # The repair saves what recovery will remove, then starts mysqld: recovery cuts
                # the commits that waited for an ack (in doubt), nothing else (issue 15).
                db = replace(self._truncate(world, index, against), alive=True, read_only=True,
                             killed_by_fence=False)
                self.repairs_without_primary += action.reference is not None
        elif isinstance(action, RebuildNode):
            if db.alive:
                db = self._rebuild(world, index, action.donor)
        elif isinstance(action, DetachSource):
            if db.alive:
                db = replace(db, receiving=False)
        elif isinstance(action, WriteFencingToken):
            db = self._write_token(world, db, name, action.token)
        elif isinstance(action, RecordFailover):
            if reachable:
                dcs = replace(dcs, last_failover=now)
        elif isinstance(action, PublishMember):
            if reachable:
                dcs = dcs.with_record(name, Record(action.info, now, now + self.ttl))
        elif isinstance(action, ClearSwitchover):
            if reachable:
                world = replace(world, switchover=None)
        elif isinstance(action, AskPromises):
            asked = PromiseRound(action.token, now, frozenset(action.members))
            agent = replace(agent, memory=replace(agent.memory, round=asked,
                                                  unreceived=frozenset(action.members), undelivered=()))
        elif isinstance(action, PublishFailsafeMembers):
            if reachable and holder == name and dcs.token == action.token:
                dcs = replace(dcs, listed=frozenset(action.members), listed_token=action.token)
        elif isinstance(action, RegisterDiscovery):
            node = replace(node, discovery=action.tag)
        elif isinstance(action, FailDiscoveryCheck):
            node = replace(node, discovery=None)
        else:
            assert isinstance(action, WaitRelayLog)
        node = replace(node, db=db, agent=agent)
        return replace(self._set_node(world, index, node), dcs=dcs)

    # ------------------------------------------------------------------ issue 15: fence by crash
    def _crashes_on_fence(self, world: World, index: int, action: SetReadOnly) -> bool:
        """The repair keeper's fence by crash (``truncate``, lossless evidence): a fence of a node
        this agent saw leave PRIMARY (role FENCING), not for a switchover, SIGKILLs mysqld when
        commits wait for an ack: writes no other node holds, or a token write still waiting."""
        if not self.fence_by_crash or not action.read_only or action.reason is ActionReason.SWITCHOVER:
            return False
        node = world.nodes[index]
        db = node.db
        if not db.alive or node.agent is None:
            return False
        role = node.agent.state.role
        # An agent restarted during the fence (or while primary) knows it from the term record:
        # its startup fence (STARTING), or a later one (REPLICA, FENCED), crashes the same run alike.
        if role is not Role.FENCING and not (node.term_open and role in (Role.STARTING, Role.REPLICA,
                                                                          Role.FENCED)):
            return False
        others = [other.db.history for other in world.nodes if other is not node]
        return db.unacked_token is not None or not any(is_prefix(db.history, theirs) for theirs in others)

    def _write_token(self, world: World, db: Db, name: str, token: int) -> Db:
        now = world.now
        if db.alive and db.semi_sync:
            # Lossless semi-sync is on: the commit is in the binlog, and waits for an ack.
            if db.unacked_token != token:
                return replace(db, unacked_token=token, unacked_since=now, history=(*db.history, name))
            waited = None if db.unacked_since is None else now - db.unacked_since
            alone = (waited is not None and self.token_alone_wait is not None
                     and waited >= self.token_alone_wait and not _attached_to(world, name))
            if waited is not None and (waited >= TOKEN_ACK_WAIT or alone):
                # The executor's FencingTokenWriter ends a wait no replica answers (their histories
                # forked from ours), sooner when none is attached: the token commits unacknowledged.
                self.token_waits_ended += 1
                self.token_alone_ends += alone and waited < TOKEN_ACK_WAIT
                return _commit_unacked(db)
        elif db.alive:
            return replace(db, token=token, history=(*db.history, name))
        return db

    @staticmethod
    def _closest(world: World, index: int) -> str:
        """The other node sharing the longest prefix of this node's history."""
        mine = world.nodes[index].db.history

        def shared(name: str) -> int:
            theirs = world.nodes[NAMES.index(name)].db.history
            common = 0
            while common < len(mine) and common < len(theirs) and mine[common] == theirs[common]:
                common += 1
            return common
        return max((name for name in NAMES if name != NAMES[index]), key=shared)

    def _truncate(self, world: World, index: int, primary: str) -> Db:
        """Crash recovery cuts the history back to what the primary shares with it. A removed
        transaction that any other node holds reached a replica: it may have been acknowledged,
        and removing it is the violation this checks."""
        db = world.nodes[index].db
        theirs = world.nodes[NAMES.index(primary)].db.history
        common = 0
        while common < len(db.history) and common < len(theirs) and db.history[common] == theirs[common]:
            common += 1
        first_removed = db.history[: common + 1]
        for other_index, other in enumerate(world.nodes):
            holds_it = len(db.history) > common and is_prefix(first_removed, other.db.history)
            if other_index != index and holds_it:
                raise ModelViolationError(
                    f"{NAMES[index]} truncates {db.history[common:]} which {NAMES[other_index]} holds "
                    f"(it reached a replica: maybe acknowledged)", self._trace)
        self.truncations += 1
        return replace(db, history=db.history[:common], unacked_token=None,  # a waiting write goes too
                       unacked_since=None)

    def _rebuild(self, world: World, index: int, donor: str) -> Db:
        """A copy of the donor replaces the node's data. Without an operator's approval that is a
        truncation (the same check); approved, the operator accepted losing what it held."""
        if not self.repair_view.rebuild_approved:
            self._truncate(world, index, donor)
            self.truncations -= 1
        self.rebuilds += 1
        theirs = world.nodes[NAMES.index(donor)].db
        return replace(world.nodes[index].db, history=theirs.history, source=None, receiving=False)

    # ------------------------------------------------------------------ search

    _trace: tuple[str, ...] = ()

    def initial_cold(self) -> World:
        nodes = tuple(Node(agent=Agent(State.initial(0.0))) for _ in NAMES)
        return World(0, nodes, Dcs(), self.limits.faults, self.limits.writes)

    def settle(self, world: World, rounds: int = 40) -> World:
        """Fault-free progress at a fixed time: agents step, replicas catch up, to a fixpoint."""
        for _ in range(rounds):
            before = world
            for index in range(len(NAMES)):
                node = world.nodes[index]
                if node.agent is None or node.agent.paused:
                    continue
                world = self._execute(self._decide(world, index), index)
                node = world.nodes[index]
                if node.db.alive and node.db.source is not None and node.db.receiving:
                    source = world.nodes[NAMES.index(node.db.source)].db
                    if source.alive and is_prefix(node.db.history, source.history):
                        world = self._set_node(world, index, replace(node, db=replace(
                            node.db, history=source.history)))
                world = acknowledge(world)
            if world == before:
                return world
        raise AssertionError("the cluster did not settle")

    def drive(self, world: World, script: list[str]) -> World:
        """Follow a scripted run: event labels (as in traces) or "settle"; then refill budgets."""
        for label in script:
            if label == "settle":
                world = self.settle(world)
                continue
            if label.startswith("db-break "):  # seed 443: a crash whose recovery fails for good
                index = NAMES.index(label.split()[1])
                node = world.nodes[index]
                assert node.db.alive, f"{label}: mysqld is down already"
                broken = replace(node.db, alive=False, broken=True)
                world = self._set_node(world, index, replace(node, db=broken))
                continue
            for candidate, successor in self.successors(world):
                if candidate == label:
                    world = successor
                    break
            else:
                raise AssertionError(f"event {label!r} is not possible here")
        return replace(world, faults_left=self.limits.faults, writes_left=self.limits.writes)

    # ------------------------------------------------------------------ liveness

    def good(self, world: World) -> bool:
        """One admitting PRIMARY holding the lock, every other node replicating from it (a node
        whose history forked from the primary's may instead stay FENCED: it needs an operator)."""
        now = float(world.now)
        holder = world.dcs.holder_at(now)
        if holder is None:
            return False
        primary = world.nodes[NAMES.index(holder)]
        if (primary.agent is None or primary.agent.state.role is not Role.PRIMARY
                or not primary.gate.admits(now)):
            return False
        for name, node in zip(NAMES, world.nodes, strict=True):
            if name == holder:
                continue
            if node.db.broken:  # never starts again: an operator rebuilds it
                continue
            if node.agent is None or node.db.killed_by_fence:  # left down: not back
                return False
            if not is_prefix(node.db.history, primary.db.history):
                if node.agent.state.role is not Role.FENCED:
                    return False
            elif (node.agent.state.role is not Role.REPLICA or node.db.source != holder
                  or not node.db.receiving):
                return False
        return True

    def faults_stop(self, world: World) -> World:
        """Every failed part comes back (database, agent, DCS link), paused agents resume and a
        stalled agent carries out what it decided; no fault budget is left."""
        now = float(world.now)
        nodes = []
        for node in world.nodes:
            db = (node.db if node.db.alive or node.db.killed_by_fence or node.db.broken  # (as above)
                  else replace(_commit_unacked(node.db), alive=True, read_only=True))
            agent = node.agent if node.agent is not None else Agent(State.initial(now))
            nodes.append(replace(node, db=db, agent=replace(agent, paused=False), partitioned=False))
        world = replace(world, nodes=tuple(nodes), faults_left=0, writes_left=0)
        for index, node in enumerate(world.nodes):
            if node.agent is not None and node.agent.pending:
                world = acknowledge(self._execute(world, index))
        return world

    def ticks_to_good(self, world: World, trace: tuple[str, ...], max_ticks: int) -> int:
        """From ``world``, stop the faults and run the fair fault-free schedule: at each clock
        tick every agent steps in turn and replicas catch up until nothing changes (``settle``),
        then time moves on. Returns how many ticks it took to reach a good state; raises
        :class:`ModelViolationError` if it takes more than ``max_ticks``. Memoised: many
        reachable states share their fault-free future."""
        self._trace = (*trace, "<faults stop>")
        current = self.faults_stop(world)
        chain: list[World] = []
        ticks = 0
        while True:
            known = self.liveness_memo.get(current)
            if known is not None:
                ticks += known
                break
            chain.append(current)
            try:
                settled = self.settle(current)
            except AssertionError as exc:
                raise ModelViolationError(f"no fault-free progress: {exc}", self._trace) from None
            self.check_world(settled, self._trace)
            if self.good(settled):
                break
            ticks += 1
            if ticks > max_ticks:
                roles = {name: role.value if role else None for name, role in self.roles(settled).items()}
                raise ModelViolationError(
                    f"liveness: no admitting primary followed by every node {max_ticks} ticks after "
                    f"the faults stopped (t={settled.now}, lock {settled.dcs.holder_at(settled.now)!r},"
                    f" roles {roles})", self._trace)
            current = replace(settled, now=settled.now + 1)
        total = ticks
        for step, state in enumerate(chain):
            self.liveness_memo[state] = total - step
        return total

    liveness_memo: dict[World, int]

    def roles(self, world: World) -> dict[str, Role | None]:
        return {
            name: (node.agent.state.role if node.agent is not None else None)
            for name, node in zip(NAMES, world.nodes, strict=True)
        }

    def explore(
        self, roots: list[World], on_state: Callable[[World], None] | None = None,
        depth: int | None = None,
    ) -> int:
        """BFS over every interleaving up to ``depth`` (default ``limits.depth``) events from
        the roots, with state hashing; returns the number of distinct states."""
        max_depth = self.limits.depth if depth is None else depth
        seen: dict[World, tuple[str, ...]] = {}
        queue: deque[tuple[World, int]] = deque()
        for root in roots:
            if root not in seen:
                seen[root] = ("<root>",)
                self.check_world(root, seen[root])
                queue.append((root, 0))
        while queue:
            world, depth = queue.popleft()
            if depth >= max_depth:
                continue
            trace = seen[world]
            for label, successor in self._successors_traced(world, trace):
                if successor in seen:
                    continue
                successor_trace = (*trace, label)
                seen[successor] = successor_trace
                self.check_world(successor, successor_trace)
                if on_state is not None:
                    on_state(successor)
                queue.append((successor, depth + 1))
        self.explored = seen
        return len(seen)

    explored: dict[World, tuple[str, ...]]

    def explore_with_liveness(
        self, roots: Iterable[tuple[World, int]], max_ticks: int, *, full: bool,
        on_state: Callable[[World], None] | None = None,
    ) -> tuple[int, Counter[int]]:
        """Explore each root to its depth (safety), then check liveness (:meth:`ticks_to_good`)
        from every state reached: up to that depth with ``full``, else up to one event less (a
        third of the states, most of the time). Returns the states explored and the ticks each
        checked state took to a good one."""
        total, recoveries = 0, Counter[int]()
        for root, depth in roots:
            total += self.explore([root], on_state=on_state, depth=depth)
            liveness_depth = depth if full else depth - 1
            for world, trace in self.explored.items():
                if len(trace) - 1 <= liveness_depth:
                    recoveries[self.ticks_to_good(world, trace, max_ticks)] += 1
        return total, recoveries

    def _successors_traced(self, world: World, trace: tuple[str, ...]) -> Iterator[tuple[str, World]]:
        self._trace = trace
        yield from self.successors(world)


__all__ = ["NAMES", "Model", "ModelLimits", "ModelViolationError", "World", "dataclasses"]

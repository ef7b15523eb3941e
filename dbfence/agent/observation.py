"""What the agent loop tells the decision core: one immutable snapshot per decision.

The loop builds an :class:`Observation` from its adapters (lock backend, MySQL
probes and checks, gate, discovery, operator intents in the DCS) and from the
results of the actions it executed since the last decision. Facts are reported as
*levels* (the gate is blocked, mysqld is read-only, the token is in the table), not
as events, so a failed or lost action is simply retried by the next decision.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from dbfence.agent.failsafe_view import FailsafeView
from dbfence.agent.gtid import BinlogState, GtidPosition
from dbfence.agent.state import Role


class ObservationError(ValueError):
    """An observation is internally inconsistent (an adapter bug, never a runtime condition)."""


class DiscoveryTag(enum.Enum):
    """The role this node currently advertises in service discovery."""

    PRIMARY = "primary"
    REPLICA = "replica"


@dataclass(frozen=True, slots=True)
class LeaseView:
    """This agent's own hold on the cluster lock, as its lock adapter knows it.

    ``deadline`` = send time of the last successful renewal (or acquisition) + ttl -
    safety margin, on this host's monotonic clock. A failed renewal leaves ``held``
    and ``deadline`` unchanged; the adapter sets ``held`` to False only once it knows
    the key is no longer ours. The adapter must also report ``held`` when the key in
    the DCS belongs to this agent's own lease/session (e.g. an acquire whose reply
    was lost but which succeeded).
    """

    held: bool = False
    token: int | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.held and (self.token is None or self.deadline is None):
            raise ObservationError("a held lease needs its fencing token and deadline")

    def valid_at(self, now: float) -> bool:
        return self.held and self.deadline is not None and now < self.deadline


@dataclass(frozen=True, slots=True)
class LockView:
    """The cluster lock key as read from the DCS in this round (``reachable`` False: read failed,
    or, with ``read_yet`` False, the agent's first read has not finished yet)."""

    reachable: bool = True
    holder: str | None = None
    token: int | None = None
    read_yet: bool = True

    @property
    def free(self) -> bool:
        return self.reachable and self.holder is None


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """The content of a member record, as an agent publishes it. ``position`` is applied;
    ``received`` is what its IO thread wrote to the relay log (None: nothing beyond applied);
    ``seen_token`` is the fencing token of the lock holder it saw when it published (None:
    lock free or unreadable) - a new holder waits for its rivals to have seen its token, so
    it compares itself with what they hold once they stopped receiving from the old primary.
    ``server_id`` is its mysqld's (None: unknown), so peers can tell its own writes apart.
    ``binlog_state`` is its mysqld's ``gtid_binlog_state`` (None: unknown, e.g. an older agent):
    every server's stream, so peers can prove what it holds of whose writes (:attr:`history`).
    ``binlog_state_at_kill``: while its mysqld stays down after the fence killed it (awaiting the
    repair), the binlog state it had just before the kill (``RepairView.binlog_state_at_kill``);
    or, while it stays down after a crash of its own and has not run since (not started yet, or
    its starts fail: soak seed 443), the state read from its binlog files
    (``RepairView.binlog_state_on_disk``). Recovery only removes transactions, so either bounds
    from above what the node holds: only the takeover without a primary reads it, where holding
    more only makes the proof harder.
    """

    name: str
    role: Role
    healthy: bool
    position: GtidPosition | None
    gate_admitting: bool
    priority: int
    received: GtidPosition | None = None
    seen_token: int | None = None
    server_id: int | None = None
    binlog_state: BinlogState | None = None
    binlog_state_at_kill: BinlogState | None = None

    @property
    def holds(self) -> GtidPosition | None:
        return _holds(self.position, self.received)

    @property
    def history(self) -> BinlogState | None:
        return _history(self.binlog_state, self.position, self.received)

    @property
    def known_history(self) -> BinlogState | None:
        """What the member holds (its live history), or at most holds (its state at a fence's kill)."""
        history = self.history
        return history if history is not None else self.binlog_state_at_kill


def _history(binlog_state: BinlogState | None, applied: GtidPosition | None,
             received: GtidPosition | None) -> BinlogState | None:
    """Every stream a node holds once its relay log is applied: its binlog state with what it
    applied and received (unknown without the binlog state or the applied position)."""
    if binlog_state is None or applied is None:
        return None
    return BinlogState.merged(binlog_state.gtids, applied.gtids, () if received is None else received.gtids)


def _holds(applied: GtidPosition | None, received: GtidPosition | None) -> GtidPosition | None:
    """What a node has once its relay log is applied (unknown when its applied position is)."""
    if applied is None or received is None:
        return applied
    return applied.furthest_with(received)


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """A member record read from the DCS; ``last_seen`` is when the observer saw it last
    change (this host's monotonic clock)."""

    info: MemberInfo
    last_seen: float

    @property
    def name(self) -> str:
        return self.info.name


@dataclass(frozen=True, slots=True)
class HealthVerdict:
    """The MySQL adapter's verdict after hysteresis, with the reasons of a trip."""

    healthy: bool
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ErrantCheck:
    """Result of the errant-GTID check of the local data against primary ``against``.

    ``gtids`` lists the local transactions the primary lacks (empty: clean). The MySQL
    adapter computes it from the primary's binlog (positions alone cannot prove a
    clean history, see ``GtidPosition.diverging_domains``).

    ``only_own_tokens``: the adapter read every listed transaction's events in the local binlog
    and each is one of this server's fencing-token writes, nothing else (the ``dbfence`` token
    tables). No client wrote or was told of them, so removing them loses no acknowledged write
    whatever the fencing evidence says (:mod:`dbfence.agent.rejoin`).
    """

    against: str
    gtids: tuple[str, ...] = ()
    only_own_tokens: bool = False

    @property
    def clean(self) -> bool:
        return not self.gtids


@dataclass(frozen=True, slots=True)
class ReplicationState:
    """Local replication. ``source`` is the node replicated from (None: not configured,
    i.e. promoted or never set up). ``running``: both threads run; ``receiving``: the IO
    thread runs or is (re)connecting, i.e. the source's binlog may still arrive (False once
    stopped, e.g. by DetachSource). ``source_connected``: the IO thread is connected to its
    source right now (``Slave_IO_Running = Yes``, not retrying): the source is alive.
    ``lag_seconds`` is how far the applier is behind the events already received (None:
    unknown). ``errant`` is the latest errant check against the current lock holder, None
    when not available; ``errant_problem`` then says why, when the adapter knows (the holder's
    binlog state could not be read: its mysqld down, or this host cut off from it).

    ``source`` is the name of the member whose published mysqld address (host, port) matches
    the replication source, or ``host:port`` when no member record ever named that address.
    """

    source: str | None = None
    running: bool = False
    receiving: bool = False
    source_connected: bool = False
    relay_log_applied: bool = True
    lag_seconds: float | None = 0.0
    errant: ErrantCheck | None = None
    errant_problem: str = ""


@dataclass(frozen=True, slots=True)
class LocalDatabase:
    """The local mysqld: health verdict, read-only flag (None: could not be read),
    applied GTID position, server id, fencing token stored in its table, replication,
    and ``received``: the GTIDs its IO thread wrote to the relay log (None: not a replica).

    A semi-sync replica acknowledges a commit once it is in its relay log, so a lagging
    applier can sit on acknowledged commits no other node has: candidates rank by
    :attr:`holds`, not by the applied position alone. ``binlog_state``: ``gtid_binlog_state``
    (None: unknown).
    """

    health: HealthVerdict
    read_only: bool | None
    position: GtidPosition | None
    server_id: int | None
    fencing_token: int | None = None
    replication: ReplicationState = ReplicationState()
    received: GtidPosition | None = None
    binlog_state: BinlogState | None = None

    @property
    def holds(self) -> GtidPosition | None:
        return _holds(self.position, self.received)

    @property
    def history(self) -> BinlogState | None:
        return _history(self.binlog_state, self.position, self.received)


@dataclass(frozen=True, slots=True)
class GateView:
    """The local gate: ``admitting`` when armed (it then still refuses at/after
    ``deadline``), the token and deadline it was armed with, open client connections."""

    admitting: bool = False
    token: int | None = None
    deadline: float | None = None
    open_connections: int = 0

    def __post_init__(self) -> None:
        if self.admitting and (self.token is None or self.deadline is None):
            raise ObservationError("an admitting gate needs the token and deadline it was armed with")
        if self.open_connections < 0:
            raise ObservationError("open_connections cannot be negative")

    def admits_at(self, now: float) -> bool:
        """What the gate itself does with the next chunk: armed and before its deadline."""
        return self.admitting and self.deadline is not None and now < self.deadline


@dataclass(frozen=True, slots=True)
class RepairView:
    """What the agent knows about repairing this node's errant transactions (``[rejoin]``).

    ``evidence_problem`` is None only when the evidence recorded at fencing proves lossless
    operation while this node was primary (AFTER_SYNC semi-sync on, never fell back to
    asynchronous replication); otherwise it says what is missing or what happened. ``running``:
    a repair is under way (mysqld may be down meanwhile). ``gave_up``: why an earlier attempt
    failed (non-empty: the agent never tries again by itself). ``saved_file``: where the errant
    transactions were written before anything was removed. ``awaiting_restart``: the agent
    killed mysqld while commits waited for an ack (the fence by crash, which keeps them in doubt)
    and it has not been started since: the repair starts it, for crash recovery to truncate them.
    ``gave_up_on``: which kind of attempt failed (``truncate`` or ``rebuild``).
    ``rebuild_approved``: an operator approved one rebuild that the evidence cannot justify
    (``[rejoin] mode = rebuild``; the approval is spent when the rebuild starts).
    ``binlog_state_at_kill`` and ``server_id_at_kill``: while ``awaiting_restart``, what the fence
    read just before the kill (``gtid_binlog_state`` with ``gtid_slave_pos``, and ``server_id``;
    None: unknown). No commit is added after a SIGKILL and crash recovery only removes some (the
    in-doubt ones): until the repair the node holds at most that.
    ``binlog_state_on_disk`` and ``server_id_on_disk``: while mysqld is down after a crash the
    fence did not cause and has not run since (not ``awaiting_restart``), the binlog state read
    from its binlog files (the last file's Gtid list and the GTIDs after it, with the applied
    position last read) and the server id that wrote them. The same bound: a crash adds nothing
    and recovery only removes. None once mysqld runs again, or unread.
    """

    evidence_problem: str | None = "no evidence recorded"
    running: bool = False
    gave_up: str = ""
    saved_file: str = ""
    awaiting_restart: bool = False
    gave_up_on: str = ""
    rebuild_approved: bool = False
    binlog_state_at_kill: BinlogState | None = None
    server_id_at_kill: int | None = None
    binlog_state_on_disk: BinlogState | None = None
    server_id_on_disk: int | None = None


@dataclass(frozen=True, slots=True)
class OperatorIntents:
    """Operator requests stored in the DCS."""

    paused: bool = False
    switchover_target: str | None = None
    skip_cooldown: bool = False


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything ``decide`` may know, all times on this host's monotonic clock.

    ``last_failover_at`` is when the last failover started (from the DCS, converted to
    the local clock by the adapter); None when there has been none. ``failsafe`` carries the
    peer promises asked and given (docs/failsafe.md).

    ``new_cluster``: the DCS holds no history at all for this cluster (read, and empty): no
    agent ever led it, so a writable mysqld without a source is a running primary to adopt and
    a replica's source without a member record is that primary, not a member whose agent died.
    None: the history could not be read yet. False (the default): the cluster has a history.
    """

    now: float
    lease: LeaseView
    lock: LockView
    members: tuple[MemberRecord, ...]
    db: LocalDatabase
    gate: GateView
    discovery: DiscoveryTag | None = None
    intents: OperatorIntents = OperatorIntents()
    last_failover_at: float | None = None
    repair: RepairView = RepairView()
    failsafe: FailsafeView = field(default_factory=FailsafeView)
    new_cluster: bool | None = False

    def __post_init__(self) -> None:
        if not math.isfinite(self.now):
            raise ObservationError(f"now must be finite, got {self.now!r}")
        names = [record.name for record in self.members]
        if len(set(names)) != len(names):
            raise ObservationError(f"duplicate member records: {sorted(names)}")

    def member(self, name: str) -> MemberRecord | None:
        for record in self.members:
            if record.name == name:
                return record
        return None

    @property
    def fence_complete(self) -> bool:
        """Gate blocked, no client connection left, mysqld read-only or unreachable."""
        gate_closed = not self.gate.admitting and self.gate.open_connections == 0
        return gate_closed and self.db.read_only is not False

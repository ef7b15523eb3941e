"""Builders of observations for the decision-core tests: one healthy default, overrides by keyword."""

from __future__ import annotations

from dbfence.agent.actions import Action, PublishMember
from dbfence.agent.core_config import CoreConfig
from dbfence.agent.decide import Decision
from dbfence.agent.gtid import BinlogState, GtidPosition
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
    ReplicationState,
)
from dbfence.agent.state import Role

ME = "n1"
NOW = 1000.0
TOKEN = 7
DEADLINE = NOW + 7.0  # renewed at NOW - 1 with ttl 10, margin 2: next renewal due at NOW + 1
CONFIG = CoreConfig(
    node_name=ME, ttl=10.0, safety_margin=2.0, renew_interval=2.0, max_lag_seconds=5.0,
    cooldown=300.0, priority=100, lossless=True, poll_interval=1.0, settle_interval=0.05,
    member_stale_after=6.0, publish_interval=2.0, relay_wait_timeout=1.0,
)
_UNSET: object = object()


def pos(text: str) -> GtidPosition:
    return GtidPosition.parse(text)


def member(
    name: str, role: Role = Role.REPLICA, *, healthy: bool = True, position: str | None = "0-1-100",
    admitting: bool = False, priority: int = 100, last_seen: float = NOW, received: str | None = None,
    seen_token: int | None = TOKEN, server_id: int | None = None, binlog_state: str | None = None,
) -> MemberRecord:
    """A peer's record; by default it has seen our lease (TOKEN), so a promotion need not wait."""
    return MemberRecord(
        MemberInfo(name, role, healthy, None if position is None else pos(position), admitting, priority,
                   None if received is None else pos(received), seen_token, server_id,
                   None if binlog_state is None else BinlogState.parse(binlog_state)),
        last_seen,
    )


def db(
    *, healthy: bool = True, read_only: bool | None = True, position: str | None = "0-1-100",
    server_id: int | None = 11, token: int | None = None, source: str | None = "n2",
    relay_applied: bool = True, lag: float | None = 0.0, errant: ErrantCheck | None = None,
    reasons: tuple[str, ...] = (), receiving: bool = False, received: str | None = None,
    binlog_state: str | None = None, errant_problem: str = "",
) -> LocalDatabase:
    return LocalDatabase(
        health=HealthVerdict(healthy, reasons if not healthy else ()),
        read_only=read_only,
        position=None if position is None else pos(position),
        server_id=server_id,
        fencing_token=token,
        replication=ReplicationState(source=source, running=source is not None,
                                     receiving=receiving,
                                     relay_log_applied=relay_applied, lag_seconds=lag, errant=errant,
                                     errant_problem=errant_problem),
        received=None if received is None else pos(received),
        binlog_state=None if binlog_state is None else BinlogState.parse(binlog_state),
    )


HELD = LeaseView(True, TOKEN, DEADLINE)
ARMED = GateView(admitting=True, token=TOKEN, deadline=DEADLINE)


NO_LEASE = LeaseView()
CLOSED = GateView()
NO_INTENTS = OperatorIntents()


def observe(
    role: Role = Role.REPLICA, *, now: float = NOW, lease: LeaseView = NO_LEASE,
    lock: LockView | None = None, peers: tuple[MemberRecord, ...] | None = None,
    database: LocalDatabase | None = None, gate: GateView = CLOSED,
    discovery: DiscoveryTag | None = None, intents: OperatorIntents = NO_INTENTS,
    last_failover_at: float | None = None, own_record: object = _UNSET,
) -> Observation:
    """An observation whose own member record already matches ``role`` (so no publish noise)."""
    database = db() if database is None else database
    if lock is None:
        lock = LockView(reachable=True, holder=ME if lease.held else None, token=lease.token)
    if peers is None:
        peers = (member("n2", position="0-1-90"), member("n3", position="0-1-80"))
    if own_record is _UNSET:
        admitting = gate.admitting
        own: MemberRecord | None = MemberRecord(
            MemberInfo(ME, role, database.health.healthy, database.position, admitting, CONFIG.priority,
                       database.received, server_id=database.server_id),
            now,
        )
    else:
        assert own_record is None or isinstance(own_record, MemberRecord)
        own = own_record
    members = peers if own is None else (own, *peers)
    return Observation(
        now=now, lease=lease, lock=lock, members=members, db=database, gate=gate,
        discovery=discovery, intents=intents, last_failover_at=last_failover_at,
    )


def core_actions(decision: Decision) -> tuple[Action, ...]:
    """The actions minus member-record publishing (tested on its own)."""
    return tuple(action for action in decision.actions if not isinstance(action, PublishMember))

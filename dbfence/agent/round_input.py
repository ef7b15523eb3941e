"""One observation for the decision core, built from the sensors' latest snapshots.

The decision loop never waits on I/O here: the database and DCS sensors read in their own
threads, and this only combines their latest results with the gate, the lease keeper and the
executor's view into an :class:`Observation`. It also keeps what observing needs to remember
between rounds (mysqld addresses of peers, restarts while primary, the gate's connection table).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from dbfence.agent.executor import Executor
from dbfence.agent.failsafe_view import FailsafeView
from dbfence.agent.gtid import BinlogState, GtidParseError
from dbfence.agent.lease_keeper import LeaseKeeper
from dbfence.agent.member_tracker import MemberTracker
from dbfence.agent.observation import (
    GateView,
    HealthVerdict,
    LocalDatabase,
    LockView,
    MemberRecord,
    Observation,
    OperatorIntents,
)
from dbfence.agent.peer_promises import FailsafeAdapter
from dbfence.agent.repair_keeper import RepairKeeper
from dbfence.agent.sensors import DbFacts, DbSensor, DcsSensor, DcsView, PeerDatabase
from dbfence.agent.state import Role, State
from dbfence.breaker import Admitting, Gate
from dbfence.config import AgentConfig
from dbfence.locks.model import ClusterSnapshot, Intent
from dbfence.mysql.monitor import HealthMonitor

log = logging.getLogger("dbfence.agent")  # the agent's one logger, as before the split

UNREADABLE_HOLDER = "<unreadable>"
# Roles from which a node may race for the lock: their health must be positively confirmed.
# (A candidate was confirmed when it decided to race; from then on only trips count.)
_RACING = frozenset({Role.STARTING, Role.REPLICA, Role.FENCED})


class Observer:
    """Builds each round's :class:`Observation` (``observe``) from the agent's parts."""

    def __init__(self, config: AgentConfig, *, state_of: Callable[[], State], members: MemberTracker,
                 dcs: DcsSensor, db: DbSensor, gate: Gate, keeper: LeaseKeeper, monitor: HealthMonitor,
                 executor: Executor, repair: RepairKeeper, failsafe: FailsafeAdapter | None) -> None:
        self.node = config.node.name
        self.reserved_connections = config.gate.reserved_connections
        self.state_of = state_of
        self.members = members
        self.dcs = dcs
        self.db = db
        self.gate = gate
        self.keeper = keeper
        self.monitor = monitor
        self.executor = executor
        self.repair = repair
        self.failsafe = failsafe
        self.names_by_address: dict[tuple[str, int], str] = {}  # mysqld address -> node name
        self._restarts_at_promotion: int | None = None
        # Long enough for a heartbeat that waited on replicas to be acknowledged once one connects
        # (IO thread restart, catch-up) and for its trip to recover.
        detection = config.detection
        self._starvation_grace = max(5.0, (detection.trip_after + detection.recover_after + 2)
                                     * detection.interval + detection.write_timeout)

    def follow_max_connections(self) -> None:
        """The gate's backend cap follows mysqld's @@max_connections (read by the probes every
        round: at start, after a reconnect, after SET GLOBAL)."""
        mysqld_max = self.monitor.prober.max_connections
        if self.gate.set_mysqld_max_connections(mysqld_max):
            log.info(json.dumps({"event": "gate_cap", "node": self.node,
                                 "mysqld_max_connections": mysqld_max, "backend_cap": self.gate.backend_cap,
                                 "reserved": self.reserved_connections}))

    def observe(self) -> Observation:
        now = time.monotonic()
        self.follow_max_connections()
        view: DcsView = self.dcs.latest
        snapshot = view.snapshot
        facts = self.db.latest
        if snapshot is None:
            lock = LockView(reachable=False, read_yet=view.attempted)
            members: tuple[MemberRecord, ...] = ()
            intent = Intent()
        else:
            state = snapshot.lock
            if state is None:
                lock = LockView(reachable=True)
            else:
                holder = state.holder.node if state.holder is not None else UNREADABLE_HOLDER
                lock = LockView(reachable=True, holder=holder, token=state.token)
            members = self.members.records(snapshot, now)
            intent = snapshot.intent
        self._follow_holder(snapshot)
        replication = facts.replication
        status = facts.replica_status
        if status is not None:
            # The sensor may have read this before the first DCS snapshot named the source; an
            # unnamed source looks like one that lost the lock (detach, then repoint: seconds
            # without acknowledging lossless commits, at every agent start).
            name = self.names_by_address.get((status.primary_host, status.primary_port))
            if name is not None and name != replication.source:
                replication = replace(replication, source=name)
        gate_state = self.gate.state
        admitting = isinstance(gate_state, Admitting)
        gate_token = self.keeper.gate_token
        open_connections = 0
        if admitting or self.state_of().role in (Role.FENCING, Role.PROMOTING, Role.PRIMARY):
            # From the workers' shared counts: asking them for their reports every round woke
            # them several times a second for a table only /status shows (issue 18).
            try:
                open_connections = self.gate.open_connections()
            except Exception:  # unknown counts as "still open": release waits
                open_connections = 1
        gate = GateView(
            admitting=admitting and gate_token is not None,
            token=gate_token if admitting else None,
            deadline=gate_state.deadline if isinstance(gate_state, Admitting) and gate_token is not None
            else None,
            open_connections=open_connections,
        )
        last_failover = None
        if view.last_failover_wall is not None:
            last_failover = now - max(0.0, time.time() - view.last_failover_wall)
        lease_status = self.keeper.status
        failsafe = (FailsafeView() if self.failsafe is None
                    else self.failsafe.observe(snapshot, lease_status))
        return Observation(
            now=now,
            lease=lease_status.view(),
            lock=lock,
            members=members,
            db=LocalDatabase(health=self._health(facts, now),
                             read_only=facts.read_only, position=facts.position,
                             received=facts.received, binlog_state=local_binlog_state(facts),
                             server_id=facts.server_id, fencing_token=facts.fencing_token,
                             replication=replication),
            gate=gate,
            discovery=self.executor.discovery,
            intents=OperatorIntents(paused=intent.paused, switchover_target=intent.switchover_target),
            last_failover_at=last_failover,
            repair=self.repair.view(),
            failsafe=failsafe,
            new_cluster=view.new_cluster,
        )

    def _health(self, facts: DbFacts, now: float) -> HealthVerdict:
        verdict = facts.health.verdict(
            require_confirmation=self.state_of().role in _RACING,
            writes_await_replicas=facts.semi_sync_starved_at is not None
            and now - facts.semi_sync_starved_at < self._starvation_grace)
        # A primary's mysqld that restarted (even faster than the probes trip) must hand over:
        # its crash recovery may have rolled back transactions that a replica already applied.
        if self.state_of().role in (Role.PRIMARY, Role.PROMOTING):
            if self._restarts_at_promotion is None:
                self._restarts_at_promotion = facts.restarts
            elif facts.restarts > self._restarts_at_promotion:
                return HealthVerdict(False, (*verdict.reasons, "mysqld restarted while primary"))
        else:
            self._restarts_at_promotion = None
        return verdict

    def _follow_holder(self, snapshot: ClusterSnapshot | None) -> None:
        """Tell the database sensor whose binlog to check for errant GTIDs, and how to name sources."""
        if snapshot is None:
            return
        # Remembered, not just current: a source whose record expired (a partitioned old primary)
        # must still be named, or a replica could not tell that it lost the lock.
        self.names_by_address.update(
            {(e.record.mysql_host, e.record.mysql_port): e.record.node for e in snapshot.members})
        by_address = dict(self.names_by_address)
        holder = snapshot.lock.holder.node if snapshot.lock and snapshot.lock.holder else None
        peer = None
        if holder and holder != self.node:
            for entry in snapshot.members:
                if entry.record.node == holder and entry.record.mysql_host and entry.record.mysql_port:
                    peer = PeerDatabase(holder, entry.record.mysql_host, entry.record.mysql_port)

        def source_of(host: str, port: int) -> str | None:
            return by_address.get((host, port))

        self.db.follow(peer, source_of)


def local_binlog_state(facts: DbFacts) -> BinlogState | None:
    """The core's view of ``gtid_binlog_state``: known only with the position it was read with
    ("" then means an empty binlog), and unknown rather than guessed when it does not parse."""
    if facts.position is None:
        return None
    try:
        return BinlogState.parse(facts.binlog_state)
    except GtidParseError:
        return None

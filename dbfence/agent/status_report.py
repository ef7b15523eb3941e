"""What an agent shows after each round: its metrics and the status report.

The report answers ``/status`` (and ``dbfence status``), ``/primary``, ``/replica`` and
``/health`` through the :class:`StatusBoard`; the metrics are Prometheus gauges. Failsafe
episodes are written to the DCS history from here once the DCS answers again.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from dbfence.agent.decide import Decision, RefusalReason
from dbfence.agent.executor import Executor, NodeIdentity
from dbfence.agent.gtid import GtidPosition
from dbfence.agent.lease_keeper import LeaseKeeper
from dbfence.agent.member_tracker import MemberTracker
from dbfence.agent.mysqld_restarter import MysqldRestarter
from dbfence.agent.observation import Observation
from dbfence.agent.peer_promises import FAILSAFE_ACTIVE_HELP, FailsafeAdapter
from dbfence.agent.repair_keeper import RepairKeeper
from dbfence.agent.sensors import DbSensor, DcsSensor
from dbfence.agent.state import Role, State
from dbfence.breaker import Admitting, Gate
from dbfence.discovery.http_api import StatusBoard, StatusReport
from dbfence.discovery.metrics import GateStatsSource, Metrics
from dbfence.locks.base import LeaseLock
from dbfence.locks.errors import LockError
from dbfence.mysql.monitor import HealthMonitor

#: Refusals that say why no repair starts (shown under ``repair.waiting`` and in the member record).
REPAIR_HOLDS = frozenset({RefusalReason.REPAIR_UNSAFE, RefusalReason.REPAIR_GAVE_UP})

log = logging.getLogger("dbfence.agent")  # the agent's one logger, as before the split

_CONNECTIONS_SHOWN = 200  # rows of the gate's connection table in /status


def holdings(observation: Observation) -> dict[str, list[str | None]]:
    """What the race compared: each node's applied and received GTIDs."""
    db = observation.db
    out: dict[str, list[str | None]] = {"(local mysqld)": [text_of(db.position), text_of(db.received)]}
    for record in observation.members:
        out[record.name] = [text_of(record.info.position), text_of(record.info.received)]
    return out


def text_of(position: GtidPosition | None) -> str | None:
    return None if position is None else str(position)


def gate_workers_report(gate: GateStatsSource) -> dict[str, Any]:
    """The part of ``/status``'s ``gate`` that only the workers know (their counters and the
    connection table), asked of them when ``/status`` is asked (:class:`StatusBoard`'s
    ``gate_report``), as the metrics' collector does at a scrape: the loop does not wake the
    workers every round for it. None and no rows when they cannot be asked."""
    try:
        stats = gate.stats()
    except Exception:  # a gate not started or stopping: unknown, not zero
        return {"refused_full": None, "login_timeouts": None, "spoofed_headers": None, "connections": []}
    return {"refused_full": stats.refused_full, "login_timeouts": stats.login_timeouts,
            "spoofed_headers": stats.spoofed_headers,
            # The oldest first, at most _CONNECTIONS_SHOWN: the status must stay small.
            "connections": [vars(row) for row in sorted(stats.connections, key=lambda r: -r.age)
                            ][:_CONNECTIONS_SHOWN]}


def fenced_wait(logged: tuple[str, ...], decision: Decision, state: State, *,
                lock_free: bool = False) -> tuple[tuple[str, ...], list[str] | None]:
    """Why a fenced node does not rejoin, or a replica does not race for the free lock
    (``lock_free``), for one log line each time the reasons change (given ``logged``, the
    reasons last logged): the new key, and the refusals to log (None: nothing).

    Only /status said it before, and soak seed 305's fenced node waited 100 s with nothing in
    its log: the role line names the refusals of the round that fenced it, not those after.
    Seed 403's db1, its agent restarted as a replica, waited without a word as well."""
    waiting = state.role is Role.FENCED or (state.role is Role.REPLICA and lock_free)
    reasons = tuple(r.reason.value for r in decision.refusals) if waiting else ()
    if reasons == logged or not reasons:
        return reasons, None
    return reasons, [f"{r.reason.value}: {r.detail}".rstrip(": ") for r in decision.refusals]


@dataclass
class StatusPublisher:
    """Publishes one round's metrics and status report; remembers what it last logged."""

    identity: NodeIdentity
    metrics: Metrics
    board: StatusBoard
    gate: Gate
    keeper: LeaseKeeper
    monitor: HealthMonitor
    db: DbSensor
    dcs: DcsSensor
    members: MemberTracker
    executor: Executor
    repair: RepairKeeper
    lock: LeaseLock
    failsafe: FailsafeAdapter | None
    restarter: MysqldRestarter | None = None
    _saturated: bool = field(default=False)  # mysqld refusing clients (too many connections), as last logged
    _fenced_wait: tuple[str, ...] = field(default=())  # why a fenced node waits, as last logged

    def publish(self, observation: Observation, decision: Decision, state: State) -> None:
        """Metrics and the status report (``/status``, ``dbfence status``) after one round."""
        self.repair.note_hold(next((r.detail for r in decision.refusals if r.reason in REPAIR_HOLDS), ""))
        lease = self.keeper.status
        now = observation.now
        gate_state = self.gate.state
        admitting = isinstance(gate_state, Admitting)
        role = state.role.value
        self.metrics.set("role", "1 for this node's current role.", 1, {"role": role})
        for other in Role:
            if other is not state.role:
                self.metrics.set("role", "1 for this node's current role.", 0, {"role": other.value})
        self.metrics.set("lease_seconds_left", "Seconds until the lease deadline (0 without lease).",
                         max(0.0, (lease.deadline or now) - now))
        if lease.last_renew_seconds is not None:
            self.metrics.set("lease_renew_seconds", "Latency of the last successful renewal.",
                             lease.last_renew_seconds)
        self.metrics.set("gate_admitting", "1 while the gate admits.", 1 if admitting else 0)
        self.metrics.set("gate_open_connections", "Client connections through the gate.",
                         observation.gate.open_connections)
        self.metrics.set("db_healthy", "1 while the local database is healthy.",
                         1 if observation.db.health.healthy else 0)
        self._publish_saturation()
        self._log_fenced_wait(decision, state, lock_free=observation.lock.free)
        facts = self.db.latest
        replicating = (facts.replica_status is not None and not facts.replication_problem
                       and facts.replication.source is not None
                       and facts.replication.source == observation.lock.holder)
        self.metrics.set("replication_running", "1 while this node replicates from the lock holder "
                         "(both threads run, lag known).", 1 if replicating else 0)
        self.metrics.set("replication_lag_seconds", "Seconds behind the source (NaN: unknown or not a "
                         "replica).", math.nan if facts.replica_lag_seconds is None
                         else facts.replica_lag_seconds)
        details = {
            "cluster": self.identity.cluster,
            "node": self.identity.node,
            "role": role,
            "since_seconds": round(now - state.since, 3),
            "fenced_reason": None if state.fenced_reason is None else state.fenced_reason.value,
            "lock": {"holder": observation.lock.holder, "token": observation.lock.token,
                     "reachable": observation.lock.reachable},
            "lease": {"held": lease.held, "token": lease.token,
                      "seconds_left": None if lease.deadline is None else round(lease.deadline - now, 3),
                      "worst_renew_gap": round(lease.worst_renew_gap, 3),
                      "least_lease_left": None if lease.least_lease_left is None
                      else round(lease.least_lease_left, 3),
                      "error": lease.error},
            "gate": {"admitting": admitting, "port": self.gate.port,
                     "reason": getattr(gate_state, "reason", ""),
                     "open_connections": observation.gate.open_connections,
                     "kernel_forwarding": self.gate.kernel_forwarding,
                     "backend_cap": self.gate.backend_cap,
                     "mysqld_max_connections": self.gate.mysqld_max_connections,
                     "remote_path": self.gate.remote_path},
            "database": {"healthy": observation.db.health.healthy,
                         "reasons": list(observation.db.health.reasons),
                         "read_only": facts.read_only,
                         "gtid_position": text_of(facts.position),
                         "gtid_received": text_of(facts.received),
                         "facts_age_seconds": round(now - facts.at, 3),
                         "replication_source": facts.replication.source,
                         # None, never 0, when it cannot be known (IO thread stopped, say)
                         "lag_seconds": facts.replica_lag_seconds,
                         "replication_problem": facts.replication_problem or None,
                         "errant": None if facts.replication.errant is None
                         else list(facts.replication.errant.gtids),
                         "errant_problem": facts.errant_problem or None,
                         "probes": list(facts.probe_summary), "error": facts.error},
            "refusals": [f"{r.reason.value}: {r.detail}".rstrip(": ") for r in decision.refusals],
            "intent": {"paused": observation.intents.paused,
                       "switchover_target": observation.intents.switchover_target},
            "dcs_problems": self.members.problems
            + ([self.dcs.latest.error] if self.dcs.latest.error else []),
            "action_errors": dict(self.executor.last_error),
            "repair": self.repair.status(),
            "mysqld_restart": None if self.restarter is None else self.restarter.status(),
            "failsafe": self._failsafe_report(observation),
        }
        self._flush_failsafe_history(observation)
        self.board.publish(StatusReport(role=role, healthy=observation.db.health.healthy,
                                        lag_seconds=facts.replica_lag_seconds, replicating=replicating,
                                        details=details, at=now, lease_deadline=lease.deadline))

    def _failsafe_report(self, observation: Observation) -> dict[str, Any] | None:
        if self.failsafe is None:
            # Exported anyway (0), so that alert rules see the series on every agent.
            self.metrics.set("failsafe_active", FAILSAFE_ACTIVE_HELP, 0)
            return None
        return self.failsafe.report(observation, self.metrics)

    def _flush_failsafe_history(self, observation: Observation) -> None:
        """Failsafe episodes go to the DCS history once the DCS answers again."""
        if self.failsafe is None or not self.failsafe.pending_history or not observation.lock.reachable:
            return
        entry = self.failsafe.pending_history[0]
        try:
            self.lock.append_history(entry)
        except LockError as exc:
            log.warning("cannot record the failsafe episode in the DCS history yet: %s", exc)
            return
        self.failsafe.pending_history.pop(0)

    def _log_fenced_wait(self, decision: Decision, state: State, *, lock_free: bool) -> None:
        self._fenced_wait, refusals = fenced_wait(self._fenced_wait, decision, state, lock_free=lock_free)
        if refusals is not None:
            event = "fenced_waiting" if state.role is Role.FENCED else "replica_not_racing"
            log.info(json.dumps({"event": event, "node": self.identity.node,
                                 "fenced_reason": None if state.fenced_reason is None
                                 else state.fenced_reason.value, "refusals": refusals}))

    def _publish_saturation(self) -> None:
        """mysqld refusing clients for lack of slots is not a failure (docs/detection.md), but
        operators must see it: one log line per change (and dbfence_probe_saturated)."""
        health = self.monitor.health
        saturated = bool(health.saturated)
        if saturated != self._saturated:
            self._saturated = saturated
            log.log(logging.WARNING if saturated else logging.INFO, json.dumps({
                "event": "mysqld_saturated" if saturated else "mysqld_not_saturated",
                "node": self.identity.node, "probes": health.describe(),
                "gate_backend_cap": self.gate.backend_cap}))

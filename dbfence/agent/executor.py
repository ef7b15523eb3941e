"""Carrying out the decision core's actions through the adapters, one structured log line each.

The contract (see docs/decision-core.md): run every action of a decision in order, even after a
failure, and never raise: a failed action shows up in the next observation as an unchanged level
(gate still armed, mysqld still writable), and the core asks again. The actions that reach the
``[rejoin]`` repair keeper are wired in :mod:`~dbfence.agent.executor_repair`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from dbfence.agent.actions import (
    AcquireLock,
    Action,
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
from dbfence.agent.executor_repair import RepairWiring
from dbfence.agent.lease_keeper import LeaseKeeper
from dbfence.agent.observation import DiscoveryTag, MemberInfo
from dbfence.agent.promise_book import PromiseBook
from dbfence.agent.promise_client import PromiseClient
from dbfence.agent.repair_keeper import RepairKeeper
from dbfence.agent.repeats import ROUTINE_ACTIONS, RepeatBackoff, RepeatedLines
from dbfence.agent.sensors import DbSensor, DcsSensor
from dbfence.breaker import Admitting, Gate, IllegalTransition
from dbfence.discovery.consul_catalog import ConsulCatalog
from dbfence.discovery.metrics import Metrics
from dbfence.locks.base import LeaseLock
from dbfence.locks.errors import LockError
from dbfence.locks.model import FailsafeList, HistoryEntry, HolderInfo, Intent, MemberRecord
from dbfence.mysql.actions import MysqlActions, PrimaryAddress, SemiSyncSettings
from dbfence.mysql.connection import Endpoint
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.errors import MysqlUnavailableError
from dbfence.mysql.gtid import GtidState
from dbfence.mysql.monitor import HealthMonitor
from dbfence.mysql.source_state import SourceNotAnsweringError, SourceStateReader
from dbfence.mysql.token_writer import FencingTokenWriter

log = logging.getLogger("dbfence.agent")

@dataclass(frozen=True, slots=True)
class NodeIdentity:
    cluster: str
    node: str
    address: str
    gate_port: int
    mysql_host: str
    mysql_port: int
    priority: int
    version: str
    api_url: str = ""  # where peers fetch backups and ask for failsafe promises


class Executor(RepairWiring):
    """Runs actions; remembers what discovery currently advertises."""

    def __init__(self, *, identity: NodeIdentity, keeper: LeaseKeeper, lock: LeaseLock, gate: Gate,
                 mysql: MysqlActions, monitor: HealthMonitor, db: DbSensor, dcs: DcsSensor,
                 replication: Credentials, catalog: ConsulCatalog | None, publish_etcd_primary: bool,
                 metrics: Metrics, semi_sync_timeout_ms: int, relay_wait_timeout: float,
                 accounts_check: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic, repair: RepairKeeper | None = None,
                 source_read_budget: float = 0.5, lossless: bool = False,
                 token_write_ended: Callable[[], None] = lambda: None) -> None:
        self.identity = identity
        self.keeper = keeper
        self.lock = lock
        self.gate = gate
        self.mysql = mysql
        self.monitor = monitor
        self.db = db
        self.dcs = dcs
        self.replication = replication
        self.catalog = catalog
        self.publish_etcd_primary = publish_etcd_primary
        self.metrics = metrics
        self.semi_sync = SemiSyncSettings(timeout_ms=semi_sync_timeout_ms)
        self.lossless = lossless  # [failover] lossless: semi-sync on before the gate admits anyone
        # Why the agent's starts of its mysqld fail (the restarter's; None: they do not).
        self.mysqld_down_reason: Callable[[], str | None] = lambda: None
        # The token write may wait for an ack as long as any commit: semi-sync's timeout.
        self.token_writer = FencingTokenWriter(mysql, identity.node, semi_sync_timeout_ms / 1000 + 30.0,
                                               on_done=token_write_ended)  # cuts the loop's back-off
        self.relay_wait_timeout = relay_wait_timeout
        self.clock = clock
        self.accounts_check = accounts_check
        self.repair = repair
        # A repoint's one read of another host: never waited for longer than this per round.
        self.source_state = SourceStateReader(mysql.credentials, budget_s=source_read_budget)
        self.accounts_checked = False
        self.discovery: DiscoveryTag | None = None
        self.check_pass_interval = 0.5
        self._last_check_pass = float("-inf")
        self.discovery_failed = False
        self.last_error: dict[str, str] = {}
        self.mysqld_unreachable: str | None = None  # set when an action found mysqld not answering
        self.lines = RepeatedLines(clock)
        self.backoff = RepeatBackoff()
        self.promise_book: PromiseBook | None = None  # failsafe: promises this agent gave
        self.promise_client: PromiseClient | None = None  # failsafe: asks the peers

    # ------------------------------------------------------------------ entry point
    def run(self, action: Action) -> bool:
        name = type(action).__name__
        started = self.clock()
        error = ""
        try:
            self._dispatch(action)
        except SourceNotAnsweringError as exc:  # the round waited its budget: no spin to back off
            error = f"{type(exc).__name__}: {exc}"
            self.backoff.paced_by_wait()
        except MysqlUnavailableError as exc:
            error = f"{type(exc).__name__}: {exc}"
            if isinstance(action, SetReadOnly):  # it talks to the local mysqld only
                self.mysqld_unreachable = error
        except Exception as exc:  # the contract: never raise; the next observation shows the level
            error = f"{type(exc).__name__}: {exc}"
        elapsed = self.clock() - started
        fields = {"event": "action", "node": self.identity.node, "action": name,
                  "reason": action.reason.value, "ok": not error,
                  "token": getattr(action, "token", None) or self.keeper.status.token}
        if error:
            fields["error"] = error
            self.last_error[name] = error
        else:
            self.last_error.pop(name, None)
        # PublishMember and RenewLock repeat every round: log them only when they fail. An action
        # repeated with the same outcome is logged once, then counted (the time is left out of
        # the comparison and added to the line).
        if error or not isinstance(action, ROUTINE_ACTIONS):
            line = json.dumps(fields, default=str)
            self.lines.log(name, line[:-1] + f', "ms": {round(elapsed * 1000, 1)}}}',
                           logging.WARNING if error else logging.INFO, same_as=line)
        self.metrics.inc("actions_total", "Actions executed, by kind and outcome.",
                         labels={"action": name, "ok": str(not error).lower()})
        return not error

    def _dispatch(self, action: Action) -> None:
        match action:
            case AcquireLock():
                self._acquire()
            case RenewLock():
                # On the keeper's thread: the loop must not wait for a DCS that may not answer.
                self.keeper.request_renewal()
            case ReleaseLock():
                self.keeper.release()
                self.dcs.refresh()
                if self.keeper.status.held:  # the keeper keeps the error: report it, not "ok"
                    raise LockError(self.keeper.status.error or "the lease is still held")
            case AdmitGate(token=token, deadline=deadline):
                self._admit(token, deadline)
            case BlockGate(reason=reason, drain=drain):
                try:
                    if drain > 0 and isinstance(self.gate.state, Admitting):
                        # The keeper keeps extending the deadline meanwhile: a transaction in
                        # flight must not be cut by the lease check halfway through the drain.
                        result = self.gate.drain(drain)
                        log.info(json.dumps({"event": "drained", "node": self.identity.node,
                                             "closed_gracefully": result.closed_gracefully,
                                             "cut": result.cut, "ms": round(result.seconds * 1000, 1)}))
                finally:
                    self.keeper.gate_token = None
                    self.gate.block(reason.value.replace("_", " "))
            case SetReadOnly(read_only=True, reason=reason):
                try:
                    self._fence(reason)
                except MysqlUnavailableError:
                    if self.repair is not None:
                        self.repair.fence_unreached()
                    raise
            case SetReadOnly(read_only=False):
                self.mysql.set_read_only(False)
            case WaitRelayLog(timeout=timeout):
                # Only a promotion waits for the relay log: a deliberate apply delay must not hold it.
                self.mysql.lift_apply_delay()
                self.mysql.wait_relay_log_applied(timeout)
            case Promote(semi_sync=semi_sync):
                if self.mysql.replica_status() is None:
                    return  # already promoted; the core asks again until it observes the effect
                self.mysql.promote(semi_sync=self.semi_sync if semi_sync else None,
                                   apply_relay_log_timeout_s=self.relay_wait_timeout)
                if self.repair is not None:  # the term's semi-sync counters start here (gate closed)
                    self.repair.on_promoted()
                held = self.keeper.status.token
                if held is not None:  # under semi-sync: it waits for the replicas that follow us
                    self._ensure_token(held)
            case Repoint(primary=primary, semi_sync=semi_sync):
                self._repoint(primary, semi_sync)
                if self.repair is not None:  # follows: a fence its restarted agent resumed is spent
                    self.repair.on_followed()
            case RebuildNode():
                self._rebuild(action)
            case TruncateErrant():
                self._truncate(action)
            case DetachSource():
                self.mysql.stop_receiving()
            case WriteFencingToken(token=token):
                # In its own thread: under lossless semi-sync it commits once a replica that
                # follows this holder acknowledges it; the core observes it then.
                self._ensure_token(token)
            case RecordFailover():
                self.lock.append_history(HistoryEntry(
                    at=time.time(), kind="failover", node=self.identity.node,
                    token=self.keeper.status.token, detail=action.reason.value))
            case ClearSwitchover():
                current = self.lock.read_intent()
                if current.switchover_target is None:
                    return  # cleared already; the core repeats this until it observes that
                self.lock.write_intent(Intent(paused=current.paused, pause_reason=current.pause_reason))
                self.lock.append_history(HistoryEntry(at=time.time(), kind="switchover",
                                                      node=self.identity.node,
                                                      token=self.keeper.status.token))
            case PublishMember(info=info):
                self._publish_member(info)
            case AskPromises(token=token, members=members, duration=duration):
                if self.promise_client is None:
                    raise RuntimeError("failsafe is off: no promise client")
                self.promise_client.ask(token, members, duration)
            case PublishFailsafeMembers(token=token, members=members):
                self.lock.write_failsafe_list(FailsafeList(token, members, self.identity.node, time.time()))
                self.dcs.refresh()
            case RegisterDiscovery(tag=tag):
                self._register(tag)
            case FailDiscoveryCheck(reason=reason):
                self._fail_discovery(reason.value)

    def _acquire(self) -> None:
        ident = self.identity
        holder = HolderInfo(ident.node, ident.address, ident.gate_port, time.time())
        if self.promise_book is None:
            self.keeper.acquire(holder)
        else:
            # A promise given after the decision to race (between observing and acting) wins.
            with self.promise_book.may_acquire() as allowed:
                if not allowed:
                    raise RuntimeError("a failsafe promise given meanwhile forbids racing")
                self.keeper.acquire(holder)
        self.dcs.refresh()

    # ------------------------------------------------------------------ gate
    def _admit(self, token: int, deadline: float) -> None:
        if not self.accounts_checked:
            # An application account with SUPER / READ ONLY ADMIN would write through read_only on
            # a fenced node: never admit before this has been checked once.
            self.accounts_check()
            self.accounts_checked = True
        lease = self.keeper.status
        if lease.held and lease.token == token and lease.deadline is not None:
            deadline = max(deadline, lease.deadline)  # a renewal may have landed since the decision
        state = self.gate.state
        if not isinstance(state, Admitting):
            self._ready_to_admit()
        self.keeper.gate_token = token
        try:
            if isinstance(state, Admitting):
                self.gate.extend(deadline)
            else:
                self.gate.admit(deadline)
        except IllegalTransition:
            self.keeper.gate_token = None
            raise

    def _ready_to_admit(self) -> None:
        """Before a closed gate admits: lossless semi-sync on (a primary promoted without a source
        got none from a Promote, and the per-round reconcile comes only after this round's admit,
        so a commit in between would be acknowledged unreplicated and counted nowhere), then the
        term's semi-sync counters recorded for [rejoin] (a term that no promotion began). A failure
        raises: the gate stays closed and the core asks again."""
        if self.lossless and self.db.latest.semi_sync_primary is not True:
            self.mysql.set_semi_sync_primary(self.semi_sync)
        if self.repair is not None:
            self.repair.before_admit()

    # ------------------------------------------------------------------ replication
    def _repoint(self, primary: str, semi_sync: bool) -> None:
        record = self._holder_record(primary)
        if not record.mysql_host or not record.mysql_port:
            raise LookupError(f"{primary}'s member record has no mysqld address")
        status = self.mysql.replica_status()
        if (status is not None and (status.primary_host, status.primary_port)
                == (record.mysql_host, record.mysql_port)
                and not status.last_io_errno and not status.last_sql_errno
                and status.sql_running == "Yes" and status.io_running in ("Yes", "Connecting")):
            return  # already follows it: a second CHANGE MASTER would only interrupt replication
        # The new primary's state, read after our own positions would be ideal; repoint reads ours
        # inside, after this, so a replica that already follows this primary could look errant.
        # The core only repoints a node that does not follow it yet. A new primary that does not
        # answer (partitioned just now) fails this action within the budget: the core asks again.
        state: GtidState = self.source_state.binlog_state(Endpoint(record.mysql_host, record.mysql_port),
                                                          primary)
        self.mysql.repoint(PrimaryAddress(record.mysql_host, record.mysql_port, self.replication, primary),
                           state, semi_sync_replica=semi_sync,
                           keep_ids=self.monitor.agent_connection_ids(),
                           around_switch_off=self._own_switch_off)

    def _ensure_token(self, token: int) -> None:
        """Write ``token``; a call that took effect is no repeat, and the back-off never outlasts
        the moment the ack wait must be ended (soak seed 305: each cost a promotion 2 s)."""
        writer, progress = self.token_writer, self.token_writer.progress
        try:
            writer.ensure(token, self._end_own_ack_wait)
        finally:
            if writer.progress != progress:
                self.backoff.progressed()
            self.backoff.due_within(writer.due_in())

    # ------------------------------------------------------------------ member record
    def _down_reasons(self) -> tuple[str, ...]:
        reason = self.mysqld_down_reason()
        return () if reason is None else (reason,)

    def _publish_member(self, info: MemberInfo) -> None:
        if self.keeper.dcs_unreachable:
            # It would wait for the call timeout and fail: the record is written again on the
            # next heartbeat once the keeper's renewals reach the DCS.
            raise LockError("skipped while the DCS cannot be asked (the lease renewals fail)")
        facts = self.db.latest
        ident = self.identity
        gate_state = "admitting" if isinstance(self.gate.state, Admitting) else "blocking"
        record = MemberRecord(
            node=ident.node,
            role=info.role.value,
            healthy=info.healthy,
            reasons=(*facts.health.verdict(require_confirmation=not info.healthy).reasons,
                     *self._repair_reasons(info), *self._down_reasons()),
            gtid_position="" if info.position is None else str(info.position),
            gtid_received="" if info.received is None else str(info.received),
            seen_token=info.seen_token,
            gate_state=gate_state,
            version=ident.version,
            last_seen=time.time(),
            priority=info.priority,
            server_id=info.server_id,  # as the core published it: it compares records with this
            gtid_binlog_state=facts.binlog_state,
            gtid_binlog_state_at_kill=str(info.binlog_state_at_kill or ""),  # "": none
            lag_seconds=facts.replica_lag_seconds,  # None when unknown: status says what is true
            address=ident.address,
            gate_port=ident.gate_port,
            mysql_host=ident.mysql_host,
            mysql_port=ident.mysql_port,
            api_url=ident.api_url,
        )
        self.lock.publish_member(record)

    # ------------------------------------------------------------------ discovery
    def _register(self, tag: DiscoveryTag) -> None:
        if self.catalog is not None:
            self.catalog.register(tag.value)
            self.catalog.pass_check(f"{tag.value}, token {self.keeper.status.token}")
        if self.publish_etcd_primary:
            publish = getattr(self.lock, "publish_primary", None)
            withdraw = getattr(self.lock, "withdraw_primary", None)
            ident = self.identity
            if tag is DiscoveryTag.PRIMARY and publish is not None:
                publish(HolderInfo(ident.node, ident.address, ident.gate_port, time.time()))
            elif withdraw is not None:
                withdraw()
        self.discovery = tag
        self.discovery_failed = False

    def reconcile_semi_sync(self, role: str, lossless: bool) -> None:
        """Keep lossless mode's settings in place, whatever path the node took to its role.

        A primary acknowledges a commit only after a replica has it (AFTER_SYNC); a replica that
        follows the primary must acknowledge, or every commit would wait. The decision core does
        not model these settings: they are maintenance of the role, done every round.
        """
        facts = self.db.latest
        try:
            if role == "primary":
                want = lossless
                if facts.semi_sync_primary is not None and facts.semi_sync_primary != want:
                    self.mysql.set_semi_sync_primary(self.semi_sync if want else None)
            elif role == "replica" and facts.replica_status is not None:
                want = lossless
                if facts.semi_sync_replica is not None and facts.semi_sync_replica != want:
                    self.mysql.set_semi_sync_replica(want)
        except Exception as exc:
            self.last_error["reconcile_semi_sync"] = str(exc)
        else:
            self.last_error.pop("reconcile_semi_sync", None)

    def keep_check_passing(self) -> None:
        """Called every loop round: a stalled agent stops passing, and Consul drops it from DNS."""
        if self.catalog is None or self.discovery is None or self.discovery_failed:
            return
        now = self.clock()
        if now - self._last_check_pass < self.check_pass_interval:
            return  # the loop may run every 50 ms; the check's TTL is seconds
        self._last_check_pass = now
        try:
            self.catalog.pass_check(f"{self.discovery.value}, token {self.keeper.status.token}")
        except Exception as exc:  # reported in status; the check then lapses by itself
            self.last_error["keep_check_passing"] = str(exc)

    def _fail_discovery(self, why: str) -> None:
        errors = []
        self.discovery_failed = True
        if self.catalog is not None:
            try:
                self.catalog.fail_check(f"fencing: {why}")
            except Exception as exc:
                errors.append(str(exc))
        if self.publish_etcd_primary:
            withdraw = getattr(self.lock, "withdraw_primary", None)
            if withdraw is not None:
                try:
                    withdraw()
                except LockError as exc:
                    errors.append(str(exc))
        self.discovery = None
        if errors:
            raise RuntimeError("; ".join(errors))

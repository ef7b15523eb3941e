"""``dbfence agent``: observe, decide with the pure core, act — until told to stop.

Threads, and why each exists:

* the **decision loop** (the main thread): builds an :class:`Observation` from the sensors'
  latest snapshots (never waiting on I/O), calls :func:`decide`, runs the actions in order;
* the **lease keeper**: renews the lease and moves the gate's deadline with it, so a slow MySQL
  action never delays a renewal;
* the **database sensor**: probes with hysteresis, plus the facts the core needs;
* the **DCS sensor**: the cluster snapshot, refreshed by a watch the moment anything changes;
* the **HTTP API**; and the gate's own worker processes, which enforce the lease deadline on every
  forwarded chunk even if all of the above were frozen.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dbfence import __version__
from dbfence.agent.actions import DetachSource, Promote, Repoint, SetReadOnly, WaitRelayLog, WriteFencingToken
from dbfence.agent.core_config import CoreConfig
from dbfence.agent.decide import Decision, decide
from dbfence.agent.executor import Executor, NodeIdentity
from dbfence.agent.failsafe_view import FailsafeView
from dbfence.agent.gtid import GtidPosition
from dbfence.agent.lease_keeper import LeaseKeeper
from dbfence.agent.observation import (
    DiscoveryTag,
    GateView,
    HealthVerdict,
    LeaseView,
    LocalDatabase,
    LockView,
    MemberInfo,
    MemberRecord,
    Observation,
    OperatorIntents,
)
from dbfence.agent.peer_promises import FAILSAFE_ACTIVE_HELP, FailsafeAdapter
from dbfence.agent.promise_book import PromiseBookError
from dbfence.agent.repair_keeper import RepairKeeper
from dbfence.agent.sensors import DbFacts, DbSensor, DcsSensor, DcsView, PeerDatabase
from dbfence.agent.state import Role, State
from dbfence.breaker import Admitting, Gate, GateConfig, GateError, GateStats, IllegalTransition
from dbfence.config import AgentConfig, api_url_of, parse_host_port
from dbfence.discovery.consul_catalog import ConsulCatalog, ServiceIdentity
from dbfence.discovery.http_api import CommandResult, HttpApi, StatusBoard, StatusReport
from dbfence.discovery.metrics import GateCollector, Metrics, ProbeCollector
from dbfence.locks.base import LeaseLock, LockSettings
from dbfence.locks.errors import LockError
from dbfence.locks.factory import DcsConfig, open_lock
from dbfence.locks.model import ClusterSnapshot, HistoryEntry, Intent
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.connection import Endpoint, Timeouts
from dbfence.mysql.credentials import load_credentials_file
from dbfence.mysql.errors import MysqlAdapterError, UnsafeAccountError
from dbfence.mysql.hysteresis import HysteresisConfig
from dbfence.mysql.monitor import HealthMonitor
from dbfence.mysql.probes import ProbeSettings, Target
from dbfence.mysql.probes import Role as ProbeRole
from dbfence.mysql.rebuild import BackupStream
from dbfence.mysql.repair import MysqldControl, RepairError
from dbfence.ops_cli import switchover_refusal
from dbfence.sdnotify import Notifier

log = logging.getLogger("dbfence.agent")

UNREADABLE_HOLDER = "<unreadable>"
# Roles from which a node may race for the lock: their health must be positively confirmed.
# (A candidate was confirmed when it decided to race; from then on only trips count.)
_RACING = frozenset({Role.STARTING, Role.REPLICA, Role.FENCED})
_CHANGES_MYSQLD = (SetReadOnly, WaitRelayLog, Promote, Repoint, DetachSource, WriteFencingToken)
_CONNECTIONS_SHOWN = 200  # rows of the gate's connection table in /status


class AgentStartError(RuntimeError):
    """The agent cannot start safely; the message says what to fix."""


def _read_secret(path: str, what: str) -> str | None:
    if not path:
        return None
    file = Path(path)
    try:
        mode = file.stat().st_mode & 0o777
        if mode & 0o077:
            raise AgentStartError(f"{what} file {file} has mode {mode:04o}; chmod 0600 {file}")
        return file.read_text().strip()
    except OSError as exc:
        raise AgentStartError(f"cannot read {what} file {file}: {exc.strerror}") from None


def core_config_of(config: AgentConfig) -> CoreConfig:
    ttl = float(int(config.dcs.ttl))
    return CoreConfig(
        node_name=config.node.name,
        ttl=ttl,
        safety_margin=config.dcs.margin,
        renew_interval=config.renew_interval,
        max_lag_seconds=config.failover.max_lag,
        cooldown=config.failover.cooldown,
        priority=config.node.priority,
        lossless=config.failover.lossless,
        poll_interval=min(1.0, config.renew_interval),
        settle_interval=0.05,
        member_stale_after=max(3.0 * config.renew_interval, ttl),
        publish_interval=config.renew_interval,
        relay_wait_timeout=min(1.0, config.failover.relay_wait_timeout),
        drain_timeout=config.gate.drain_timeout,
        rejoin_mode=config.rejoin.mode,
        failsafe=config.failover.failsafe,
    )


def http_address_of(config: AgentConfig) -> str:
    """host:port where peers reach this agent's HTTP API ("" when it is off)."""
    if not config.http.listen:
        return ""
    host, port = parse_host_port("http.listen", config.http.listen)
    if host in ("0.0.0.0", "::", ""):
        host = config.node.address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class MemberTracker:
    """Turns DCS member records into the core's records, with ``last_seen`` on our clock.

    A peer's record that vanishes is still reported, unchanged (and so soon stale), for
    ``keep_vanished`` seconds after it was last read. A record can vanish before its node is
    gone: a Consul session ended early, a stopping agent that closed its session. Until the
    node publishes again, a lossless race must still count what it held (the core counts stale
    records as rivals then); once it has surely been gone that long, it stops counting.
    """

    node: str = ""
    keep_vanished: float = 0.0
    seen: dict[str, tuple[Any, float]] = field(default_factory=dict)
    last_read: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def records(self, snapshot: ClusterSnapshot, now: float) -> tuple[MemberRecord, ...]:
        out = []
        self.problems = [str(p) for p in snapshot.problems]
        present = set()
        for entry in snapshot.members:
            raw = entry.record
            present.add(raw.node)
            previous = self.seen.get(raw.node)
            changed_at = now if previous is None or previous[0] != raw else previous[1]
            self.seen[raw.node] = (raw, changed_at)
            self.last_read[raw.node] = now
            record = self._record(raw, changed_at)
            if record is not None:
                out.append(record)
        for name in sorted(set(self.seen) - present):
            raw, changed_at = self.seen[name]
            if name == self.node or now - self.last_read.get(name, now) > self.keep_vanished:
                del self.seen[name]  # our own record is written anew; theirs has surely gone
                self.last_read.pop(name, None)
                continue
            record = self._record(raw, changed_at)
            if record is not None:
                out.append(record)
        return tuple(out)

    def _record(self, raw: Any, changed_at: float) -> MemberRecord | None:
        try:
            role = Role(raw.role)
            position = GtidPosition.parse(raw.gtid_position) if raw.gtid_position else None
            received = GtidPosition.parse(raw.gtid_received) if raw.gtid_received else None
        except ValueError as exc:
            self.problems.append(f"member {raw.node}: {exc}")
            return None
        info = MemberInfo(name=raw.node, role=role, healthy=raw.healthy, position=position,
                          gate_admitting=raw.gate_state == "admitting", priority=raw.priority,
                          received=received, seen_token=raw.seen_token, server_id=raw.server_id)
        return MemberRecord(info=info, last_seen=changed_at)


def _holdings(observation: Observation) -> dict[str, list[str | None]]:
    db = observation.db
    out: dict[str, list[str | None]] = {"(local mysqld)": [_text(db.position), _text(db.received)]}
    for record in observation.members:
        out[record.name] = [_text(record.info.position), _text(record.info.received)]
    return out


def _text(position: GtidPosition | None) -> str | None:
    return None if position is None else str(position)


class Agent:
    """One node's agent: owns the adapters, the threads and the decision loop."""

    def __init__(self, config: AgentConfig, *, notifier: Notifier | None = None) -> None:
        self.config = config
        self.core_config = core_config_of(config)
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.state = State.initial(time.monotonic())
        self.last_decision: Decision | None = None
        self.members = MemberTracker(node=config.node.name, keep_vanished=float(config.dcs.ttl))
        self._names_by_address: dict[tuple[str, int], str] = {}  # mysqld address -> node name
        self._restarts_at_promotion: int | None = None
        # Long enough for a heartbeat that waited on replicas to be acknowledged once one connects
        # (IO thread restart, catch-up) and for its trip to recover.
        detection = config.detection
        self._starvation_grace = max(5.0, (detection.trip_after + detection.recover_after + 2)
                                     * detection.interval + detection.write_timeout)
        self._started_wall = time.time()

        credentials_file = config.mysql.credentials_file
        try:
            self.credentials = load_credentials_file(credentials_file, "client")
            self.replication = load_credentials_file(credentials_file, "replication")
        except Exception as exc:
            raise AgentStartError(str(exc)) from None

        endpoint = Endpoint(config.mysql.host, config.mysql.port, config.mysql.socket or None)
        self.mysql = MysqlActions(endpoint, self.credentials,
                                  Timeouts(connect_s=1.0, read_s=5.0, write_s=5.0), name=config.node.name)
        self._check_accounts()

        detection = config.detection
        reserved = Endpoint(config.mysql.host, config.mysql.extra_port) if config.mysql.extra_port else None
        target = Target(endpoint=endpoint, credentials=self.credentials,
                        pid_file=Path(config.mysql.pid_file) if config.mysql.pid_file else None,
                        datadir=Path(config.mysql.datadir) if config.mysql.datadir else None,
                        reserved_endpoint=reserved)
        settings = ProbeSettings(interval_s=detection.interval, connect_timeout_s=detection.connect_timeout,
                                 select_timeout_s=detection.select_timeout,
                                 write_timeout_s=detection.write_timeout,
                                 disk_min_free_bytes=detection.min_free_disk_mb * 1024 * 1024,
                                 max_replica_lag_s=max(30.0, config.failover.max_lag * 3))
        self.monitor = HealthMonitor(target, settings, HysteresisConfig(trip_after=detection.trip_after,
                                                                        recover_after=detection.recover_after))

        gate_host, gate_port = parse_host_port("gate.listen", config.gate.listen)
        self.gate = Gate(GateConfig(
            listen_host=gate_host, listen_port=gate_port,
            backend_host=config.mysql.host, backend_port=config.mysql.port,
            backend_socket=config.mysql.socket or None, workers=config.gate.workers,
            max_connections=config.gate.max_connections or None,
            reserved_connections=config.gate.reserved_connections,
            login_timeout=config.gate.login_timeout,
            idle_timeout=config.gate.idle_timeout or None,
            kernel_forwarding=config.gate.kernel_forwarding,
            proxy_protocol=config.gate.proxy_protocol,
            backend_source=config.gate.backend_source or None,
            remote_path=config.gate.remote_path, remote_interfaces=",".join(config.gate.remote_interfaces),
        ))
        self._gate_stats: GateStats | None = None  # the latest connection table, when read
        # Read at scrape time: the workers' own counters, and the probes' latest results.
        self.metrics.add_collector(GateCollector(self.gate))
        self.metrics.add_collector(ProbeCollector(lambda: self.monitor.health))
        self.metrics.set("info", "1; the labels name this agent's cluster and node (for joins).", 1,
                         {"cluster": config.cluster.name, "node": config.node.name, "version": __version__})
        self._saturated = False  # mysqld refusing clients (too many connections), as last logged
        # Answers about our role read the gate's fence word when they are given; the report's own
        # facts count for /replica and /health only while younger than a lease.
        self.board = StatusBoard(self.gate.admits_now, stale_after=float(int(config.dcs.ttl)))

        dcs = config.dcs
        self.lock = self._open_lock(config)
        self.http_token = _read_secret(config.http.token_file, "http.token_file")
        self.catalog: ConsulCatalog | None = None
        if config.discovery.consul_agent:
            self.catalog = ConsulCatalog(
                config.discovery.consul_agent,
                ServiceIdentity(config.cluster.name, config.node.name, config.node.address, gate_port),
                check_ttl=max(dcs.ttl, 2.0), token=_read_secret(dcs.acl_token_file, "dcs.acl_token_file"),
            )
        self.keeper = LeaseKeeper(self.lock, self.gate, self.wake, renew_interval=config.renew_interval)
        self.db = DbSensor(self.monitor, self.mysql, self.credentials, self.wake)
        self.dcs = DcsSensor(self.lock, self.wake, poll=1.0)
        self.identity = NodeIdentity(
            cluster=config.cluster.name, node=config.node.name, address=config.node.address,
            gate_port=gate_port, mysql_host=config.mysql.host, mysql_port=config.mysql.port,
            priority=config.node.priority, version=__version__, api_url=api_url_of(config),
            http_address=http_address_of(config))
        rejoin = config.rejoin
        self.repair = RepairKeeper(
            mode=rejoin.mode, state_dir=Path(rejoin.state_dir), node=config.node.name, mysql=self.mysql,
            control=MysqldControl(pid_file=Path(config.mysql.pid_file),
                                  start_command=tuple(rejoin.start_command),
                                  start_timeout=rejoin.start_timeout, binlog_tool=rejoin.binlog_tool),
            on_done=self._record_repair, api_token=self.http_token, backup_tool=rejoin.backup_tool,
            mbstream_tool=rejoin.mbstream_tool)
        self.executor = Executor(
            identity=self.identity, keeper=self.keeper, lock=self.lock, gate=self.gate, mysql=self.mysql,
            monitor=self.monitor, db=self.db, dcs=self.dcs, replication=self.replication,
            catalog=self.catalog, publish_etcd_primary=dcs.kind == "etcd" and config.discovery.etcd_key,
            metrics=self.metrics, semi_sync_timeout_ms=config.failover.semi_sync_timeout_ms,
            relay_wait_timeout=config.failover.relay_wait_timeout,
            accounts_check=self.check_app_accounts, repair=self.repair)
        self.failsafe: FailsafeAdapter | None = None
        if config.failover.failsafe:
            assert self.http_token is not None  # the configuration requires http.token_file
            try:
                self.failsafe = FailsafeAdapter(
                    config=self.core_config, cluster=config.cluster.name, token=self.http_token,
                    state_dir=Path(config.node.state_dir), wake=self.wake, dcs=self.dcs,
                    state_of=lambda: self.state, lease_of=self._lease_view,
                    request_timeout=max(0.2, min(1.0, config.renew_interval / 2)),
                    extend_gate=self._extend_gate_on_promises,
                    unreachable_since=self._unreachable_since)
            except PromiseBookError as exc:
                raise AgentStartError(f"failover.failsafe: {exc}") from None
            self.executor.promise_book = self.failsafe.book
            self.executor.promise_client = self.failsafe.client
        self.http: HttpApi | None = None

    def _lease_view(self) -> LeaseView:
        return self.keeper.status.view()  # the keeper swaps its status: read it at call time

    def _unreachable_since(self) -> float | None:
        return self.keeper.status.unreachable_since

    def _extend_gate_on_promises(self, token: int, deadline: float) -> None:
        """As the lease keeper does on a renewal: only a gate admitting under this token, never
        reopening a blocked one, never moving its deadline back."""
        state = self.gate.state
        if self.keeper.gate_token != token or not isinstance(state, Admitting) or state.deadline >= deadline:
            return
        with contextlib.suppress(IllegalTransition):  # blocked or expired meanwhile: stays so
            self.gate.extend(deadline)

    @staticmethod
    def _open_lock(config: AgentConfig) -> LeaseLock:
        dcs = config.dcs
        try:
            return open_lock(
                DcsConfig(kind=dcs.kind, endpoints=tuple(dcs.endpoints), ca_cert=dcs.tls_ca or None,
                          cert=dcs.tls_cert or None, key=dcs.tls_key or None, user=dcs.username or None,
                          password=_read_secret(dcs.password_file, "dcs.password_file"),
                          token=_read_secret(dcs.acl_token_file, "dcs.acl_token_file")),
                config.cluster.name, config.node.name,
                # Every DCS call gives up well inside the margin it protects.
                LockSettings(ttl=int(dcs.ttl), margin=dcs.margin, call_timeout=min(2.0, dcs.margin * 0.6),
                             lock_delay=int(dcs.lock_delay)),
            )
        except ValueError as exc:
            raise AgentStartError(f"cannot use the DCS settings: {exc}") from None

    def _check_accounts(self) -> None:
        """Refuse to start if an application account can write through read_only.

        If mysqld is down now, the check is repeated before the gate first admits.
        """
        try:
            self.check_app_accounts()
        except UnsafeAccountError as exc:
            raise AgentStartError(str(exc)) from None
        except MysqlAdapterError as exc:
            log.warning("cannot check the application accounts yet (%s); checking before admitting", exc)

    def _serve_backup(self) -> tuple[int, Iterable[bytes]]:
        """Be a donor ([rejoin] mode = rebuild): a fenced or starting node's data may be errant."""
        if self.state.role not in (Role.PRIMARY, Role.REPLICA):
            raise RepairError(f"this node is {self.state.role.value}, not a healthy primary or replica")
        stream = BackupStream(self.mysql, self.config.rejoin.donor_rate_mib << 20,
                              tool=self.config.rejoin.backup_tool)
        return stream.estimate, stream.chunks()

    def _record_repair(self, kind: str, detail: str) -> None:
        """A repair ended (its own thread): `dbfence history` names it and the saved file."""
        try:
            self.lock.append_history(HistoryEntry(at=time.time(), kind=kind, node=self.identity.node,
                                                  detail=detail))
        except LockError as exc:
            log.warning("cannot record the repair in the DCS history (%s): %s", exc, detail)
        self.wake.set()

    def check_app_accounts(self) -> None:
        for app_user in self.config.mysql.app_users:
            self.mysql.check_app_account(app_user)

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

    def _follow_max_connections(self) -> None:
        """The gate's backend cap follows mysqld's @@max_connections (read by the probes every
        round: at start, after a reconnect, after SET GLOBAL)."""
        mysqld_max = self.monitor.prober.max_connections
        if self.gate.set_mysqld_max_connections(mysqld_max):
            log.info(json.dumps({"event": "gate_cap", "node": self.identity.node,
                                 "mysqld_max_connections": mysqld_max, "backend_cap": self.gate.backend_cap,
                                 "reserved": self.config.gate.reserved_connections}))

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Everything up with the gate blocked; the first decision comes from :meth:`run`."""
        try:
            self.gate.start()
        except GateError as exc:  # its port is taken, say, or kernel_forwarding = "on" cannot work
            raise AgentStartError(f"the gate cannot start: {exc}") from None
        if self.config.http.listen:
            host, port = parse_host_port("http.listen", self.config.http.listen)
            donor = self._serve_backup if self.config.rejoin.mode == "rebuild" else None
            self.http = HttpApi(host, port, self.board, self.metrics, token=self.http_token,
                                on_command=self.handle_command, backup=donor,
                                on_promise=None if self.failsafe is None else self.failsafe.answer).start()
        self.keeper.start()
        self.db.start()
        self.dcs.start()
        log.info(json.dumps({"event": "started", "node": self.identity.node, "cluster": self.identity.cluster,
                             "gate_port": self.gate.port, "kernel_forwarding": self.gate.kernel_forwarding,
                             "remote_path": self.gate.remote_path, "version": __version__}))

    def request_stop(self, *_: object) -> None:
        self.stopping.set()
        self.wake.set()

    def run(self) -> None:
        ready = False
        while not self.stopping.is_set():
            try:
                decision = self.step()
            except Exception:
                # A bug, not an I/O error (those are observations): never keep admitting because
                # of it. The gate stays blocked until a later round decides to admit again.
                log.exception("decision round failed; blocking the gate")
                self.keeper.gate_token = None
                with contextlib.suppress(Exception):
                    self.gate.block("agent loop error")
                self.wake.wait(0.5)
                self.wake.clear()
                continue
            if not ready:
                self.notifier.ready(f"{self.state.role.value}")
                ready = True
            self.notifier.watchdog()
            backoff = self.executor.backoff.after_round(decision.actions)
            if backoff > 0:
                # The same actions again achieved nothing; their own failures wake the loop (the
                # keeper's, say), so only a stop request cuts this wait short.
                self.stopping.wait(backoff)
            delay = max(0.0, min(decision.next_wakeup - time.monotonic(), 1.0))
            self.wake.wait(delay)
            self.wake.clear()
        self.shutdown()

    def step(self) -> Decision:
        """One round: observe, decide, act, publish status."""
        observation = self.observe()
        decision = decide(observation, self.state, self.core_config)
        if decision.state.role is not self.state.role:
            log.info(json.dumps({"event": "role", "node": self.identity.node, "from": self.state.role.value,
                                 "to": decision.state.role.value,
                                 "why": None if decision.state.fenced_reason is None
                                 else decision.state.fenced_reason.value,
                                 "db": list(observation.db.health.reasons),
                                 "refusals": [r.reason.value for r in decision.refusals],
                                 "token": self.keeper.status.token,
                                 # what the race compared: each node's applied and received GTIDs
                                 "holds": _holdings(observation)}))
            if decision.state.role is Role.PRIMARY and self.state.role is Role.PROMOTING:
                self.metrics.inc("promotions_total", "Times this node became primary.")
            self._repair_role_change(self.state.role, decision.state.role)
        self.state = decision.state
        self.db.want_role(self._probe_role())
        self.executor.mysqld_unreachable = None
        for action in decision.actions:
            self.executor.run(action)
        if self.executor.mysqld_unreachable is not None:
            self.db.mark_unreachable(self.executor.mysqld_unreachable)
        elif any(isinstance(action, _CHANGES_MYSQLD) for action in decision.actions):
            self.db.refresh_facts()
        if self.executor.discovery is not DiscoveryTag.PRIMARY or self.gate.admits_now():
            # Never pass the primary's check for a gate whose fence has closed (a pause that
            # outlived the lease ends between this round's observation and here).
            self.executor.keep_check_passing()
        self.executor.reconcile_semi_sync(self.state.role.value, self.config.failover.lossless)
        self.last_decision = decision
        self._publish_status(observation, decision)
        return decision

    def _repair_role_change(self, old: Role, new: Role) -> None:
        """Evidence for [rejoin]: read when a primary fences, spent once it serves again."""
        if new is Role.FENCING and old in (Role.PRIMARY, Role.PROMOTING):
            self.repair.on_fencing()
        elif new is Role.PRIMARY or (old is Role.FENCED and new is Role.REPLICA):
            self.repair.on_serving()

    def _probe_role(self) -> ProbeRole:
        """Which probes fit: the heartbeat write only on an admitting primary, replication checks
        only where replication is configured (a promoting node is read-only for a moment)."""
        if self.state.role is Role.PRIMARY:
            return ProbeRole.PRIMARY
        if self.state.role in (Role.REPLICA, Role.CANDIDATE) and self.db.latest.replica_status is not None:
            return ProbeRole.REPLICA
        return ProbeRole.FENCED

    def observe(self) -> Observation:
        now = time.monotonic()
        self._follow_max_connections()
        view: DcsView = self.dcs.latest
        snapshot = view.snapshot
        facts = self.db.latest
        if snapshot is None:
            lock = LockView(reachable=False)
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
            name = self._names_by_address.get((status.primary_host, status.primary_port))
            if name is not None and name != replication.source:
                replication = replace(replication, source=name)
        gate_state = self.gate.state
        admitting = isinstance(gate_state, Admitting)
        gate_token = self.keeper.gate_token
        open_connections = 0
        self._gate_stats = None
        if admitting or self.state.role in (Role.FENCING, Role.PROMOTING, Role.PRIMARY):
            try:
                self._gate_stats = self.gate.stats()
                open_connections = self._gate_stats.open_connections
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
                             received=facts.received,
                             server_id=facts.server_id, fencing_token=facts.fencing_token,
                             replication=replication),
            gate=gate,
            discovery=self.executor.discovery,
            intents=OperatorIntents(paused=intent.paused, switchover_target=intent.switchover_target),
            last_failover_at=last_failover,
            repair=self.repair.view(),
            failsafe=failsafe,
        )

    def _health(self, facts: DbFacts, now: float) -> HealthVerdict:
        verdict = facts.health.verdict(
            require_confirmation=self.state.role in _RACING,
            writes_await_replicas=facts.semi_sync_starved_at is not None
            and now - facts.semi_sync_starved_at < self._starvation_grace)
        # A primary's mysqld that restarted (even faster than the probes trip) must hand over:
        # its crash recovery may have rolled back transactions that a replica already applied.
        if self.state.role in (Role.PRIMARY, Role.PROMOTING):
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
        self._names_by_address.update(
            {(e.record.mysql_host, e.record.mysql_port): e.record.node for e in snapshot.members})
        by_address = dict(self._names_by_address)
        holder = snapshot.lock.holder.node if snapshot.lock and snapshot.lock.holder else None
        peer = None
        if holder and holder != self.identity.node:
            for entry in snapshot.members:
                if entry.record.node == holder and entry.record.mysql_host and entry.record.mysql_port:
                    peer = PeerDatabase(holder, entry.record.mysql_host, entry.record.mysql_port)

        def source_of(host: str, port: int) -> str | None:
            return by_address.get((host, port))

        self.db.follow(peer, source_of)

    # ------------------------------------------------------------------ status
    def _publish_status(self, observation: Observation, decision: Decision) -> None:
        lease = self.keeper.status
        now = observation.now
        gate_state = self.gate.state
        admitting = isinstance(gate_state, Admitting)
        role = self.state.role.value
        self.metrics.set("role", "1 for this node's current role.", 1, {"role": role})
        for other in Role:
            if other is not self.state.role:
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
            "since_seconds": round(now - self.state.since, 3),
            "fenced_reason": None if self.state.fenced_reason is None else self.state.fenced_reason.value,
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
                     "refused_full": None if self._gate_stats is None else self._gate_stats.refused_full,
                     "login_timeouts": None if self._gate_stats is None else self._gate_stats.login_timeouts,
                     "remote_path": self.gate.remote_path,
                     # The oldest first, at most _CONNECTIONS_SHOWN: the status must stay small.
                     "connections": [] if self._gate_stats is None else [
                         vars(row) for row in sorted(self._gate_stats.connections, key=lambda r: -r.age)
                     ][:_CONNECTIONS_SHOWN]},
            "database": {"healthy": observation.db.health.healthy,
                         "reasons": list(observation.db.health.reasons),
                         "read_only": facts.read_only,
                         "gtid_position": _text(facts.position),
                         "gtid_received": _text(facts.received),
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

    # ------------------------------------------------------------------ operator commands
    def handle_command(self, command: str, args: dict[str, str]) -> CommandResult:
        try:
            current = self.lock.read_intent()
            if command == "pause":
                self.lock.write_intent(Intent(paused=True, pause_reason=args.get("reason", "operator"),
                                              requested_by=self.identity.node, requested_at=time.time()))
                return CommandResult(200, "cluster paused")
            if command == "resume":
                self.lock.write_intent(Intent(switchover_target=current.switchover_target))
                return CommandResult(200, "cluster resumed")
            target = args.get("to", "")
            if not target:
                return CommandResult(400, "switchover needs ?to=NODE")
            refusal = switchover_refusal(self.lock.snapshot(strict=False), target,
                                         self.config.failover.max_lag)
            if refusal:
                return CommandResult(409, f"refused: {refusal}")
            self.lock.write_intent(Intent(paused=current.paused, pause_reason=current.pause_reason,
                                          switchover_target=target, requested_by=self.identity.node,
                                          requested_at=time.time()))
            return CommandResult(202, f"switchover to {target} requested")
        except LockError as exc:
            return CommandResult(503, f"DCS unavailable: {exc}")

    # ------------------------------------------------------------------ stop
    def shutdown(self) -> None:
        """Fence before anything else, then hand the lock over and stop every thread.

        Each step is logged as the executor logs an action (what, why, ok, how long), then one
        ``stopped`` line with the total: a stop that hangs or fails shows where."""
        started = time.monotonic()
        self.notifier.stopping()
        role = self.state.role
        token = self.keeper.status.token
        log.info(json.dumps({"event": "stopping", "node": self.identity.node, "role": role.value,
                             "token": token}))
        was_primary = role in (Role.PRIMARY, Role.PROMOTING, Role.FENCING)
        self.keeper.gate_token = None
        self._stop_step("BlockGate", lambda: self.gate.block("agent stopping"), token)
        catalog = self.catalog
        if catalog is not None:
            self._stop_step("FailDiscoveryCheck", lambda: catalog.fail_check("agent stopping"), token)
        fenced = True
        if was_primary:
            fenced = self._stop_step("SetReadOnly", lambda: self.mysql.fence(
                keep_ids=self.monitor.agent_connection_ids()), token)
        threads_started = time.monotonic()
        self.db.stop()
        self.dcs.stop()
        self.keeper.stop()
        if self.failsafe is not None:
            self.failsafe.stop()
        threads_ms = round((time.monotonic() - threads_started) * 1000, 1)
        held = self.keeper.status.held
        release = "ReleaseLock" if held else "LeaveSession"
        if fenced:
            # The lock goes at once; our member record stays until the session expires, so agents
            # restarted with us do not race as if this node held nothing (LeaseLock.leave).
            released = self._stop_step(release, self.keeper.leave, token)
        else:
            released = False
            self._log_stop_step(release, 0.0, "skipped: mysqld was not set read-only, so the lock is "
                                "left to expire by itself (TTL) rather than handed over unfenced", token)
        self.gate.stop()
        self.monitor.close()
        if self.http is not None:
            self.http.stop()
        self.lock.close()
        log.info(json.dumps({"event": "stopped", "node": self.identity.node, "role": role.value,
                             "token": token, "lock_released": released and held,
                             "ms": round((time.monotonic() - started) * 1000, 1),
                             "threads_ms": threads_ms}))

    def _stop_step(self, action: str, step: Callable[[], object], token: int | None) -> bool:
        """Run one step of the stop; never raise (the next steps must still run)."""
        started = time.monotonic()
        error = ""
        try:
            step()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        self._log_stop_step(action, time.monotonic() - started, error, token)
        return not error

    def _log_stop_step(self, action: str, seconds: float, error: str, token: int | None) -> None:
        fields: dict[str, Any] = {"event": "action", "node": self.identity.node, "action": action,
                                  "reason": "agent_stopping", "ok": not error,
                                  "ms": round(seconds * 1000, 1), "token": token}
        if error:
            fields["error"] = error
        log.log(logging.WARNING if error else logging.INFO, json.dumps(fields, default=str))


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def run_agent(config: AgentConfig, *, on_started: Callable[[Agent], None] | None = None) -> None:
    agent = Agent(config)
    signal.signal(signal.SIGTERM, agent.request_stop)
    signal.signal(signal.SIGINT, agent.request_stop)
    agent.start()
    if on_started is not None:
        on_started(agent)
    agent.run()

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

This module owns the parts and the loop (start, rounds, stop). Around it, one job each:
:mod:`daemon_config` (configuration to settings, secrets, the lock), :mod:`member_tracker` (DCS
records as the core's), :mod:`round_input` (one round's observation), :mod:`status_report` (metrics
and ``/status``), :mod:`operator_commands` (pause, resume, switchover).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dbfence import __version__
from dbfence.agent.actions import DetachSource, Promote, Repoint, SetReadOnly, WaitRelayLog, WriteFencingToken
from dbfence.agent.binlog_on_disk_reader import DiskStateReader
from dbfence.agent.binlog_tail_saver import BinlogTailSaver
from dbfence.agent.daemon_config import (
    AgentStartError,
    api_tls_of,
    core_config_of,
    gate_config_of,
    monitor_of,
    open_lock_of,
    read_secret,
)
from dbfence.agent.decide import Decision, decide
from dbfence.agent.executor import Executor, NodeIdentity
from dbfence.agent.lease_keeper import LeaseKeeper
from dbfence.agent.member_tracker import MemberTracker
from dbfence.agent.mysqld_restarter import FAILED_MARKER, MysqldRestarter
from dbfence.agent.observation import DiscoveryTag, LeaseView
from dbfence.agent.operator_commands import answer_command, approve_rebuild
from dbfence.agent.peer_promises import FailsafeAdapter
from dbfence.agent.promise_book import PromiseBookError
from dbfence.agent.repair_keeper import RepairKeeper
from dbfence.agent.round_input import Observer
from dbfence.agent.sensors import DbSensor, DcsSensor
from dbfence.agent.state import Role, State
from dbfence.agent.status_report import StatusPublisher, gate_workers_report, holdings
from dbfence.breaker import Admitting, Gate, GateError, IllegalTransition
from dbfence.config import AgentConfig, api_url_of, parse_host_port
from dbfence.discovery.consul_catalog import ConsulCatalog, ServiceIdentity
from dbfence.discovery.http_api import APPROVE_REBUILD, CommandResult, HttpApi, StatusBoard
from dbfence.discovery.metrics import GateCollector, Metrics, ProbeCollector
from dbfence.locks.errors import LockError
from dbfence.locks.model import HistoryEntry
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.connection import Endpoint, Timeouts
from dbfence.mysql.credentials import load_credentials_file
from dbfence.mysql.errors import MysqlAdapterError, UnsafeAccountError
from dbfence.mysql.probes import Role as ProbeRole
from dbfence.mysql.rebuild import BackupStream
from dbfence.mysql.repair import MysqldControl
from dbfence.mysql.repair_errors import RepairError
from dbfence.pageout import page_out_libraries
from dbfence.sdnotify import Notifier

log = logging.getLogger("dbfence.agent")

__all__ = [
    "Agent",
    "AgentStartError",
    "MemberTracker",
    "configure_logging",
    "core_config_of",
    "run_agent",
]

_CHANGES_MYSQLD = (SetReadOnly, WaitRelayLog, Promote, Repoint, DetachSource, WriteFencingToken)


def serves_again(old: Role, new: Role) -> bool:
    """Whether a role change spends the evidence of the last fence ([rejoin]): primary again,
    rejoined as a replica, or a switchover's old primary that handed over (FENCING -> REPLICA)."""
    return new is Role.PRIMARY or (old in (Role.FENCED, Role.FENCING) and new is Role.REPLICA)


class Agent:
    """One node's agent: owns the adapters, the threads and the decision loop."""

    def __init__(self, config: AgentConfig, *, notifier: Notifier | None = None) -> None:
        self.config = config
        self.core_config = core_config_of(config)
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        # Ends the loop's back-off early: a stop request, or a fencing-token write that ended
        # (the core can see the token now; other wakes are often the repeated action's own failures).
        self.backoff_cut = threading.Event()
        self.state = State.initial(time.monotonic())
        self.last_decision: Decision | None = None
        self.members = MemberTracker(node=config.node.name, keep_vanished=float(config.dcs.ttl))
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
        if config.gate.proxy_protocol:  # mysqld must take the header from the gate: as dbfence check
            from dbfence.preflight.at_start import proxy_protocol_refusal  # noqa: PLC0415 (only then)

            refusal = proxy_protocol_refusal(config)
            if refusal is not None:
                raise AgentStartError(refusal)

        self.monitor = monitor_of(config, endpoint, self.credentials)

        gate_port = parse_host_port("gate.listen", config.gate.listen)[1]
        self.gate = Gate(gate_config_of(config))
        # Read at scrape time: the workers' own counters, and the probes' latest results.
        self.metrics.add_collector(GateCollector(self.gate))
        self.metrics.add_collector(ProbeCollector(lambda: self.monitor.health))
        self.metrics.set("info", "1; the labels name this agent's cluster and node (for joins).", 1,
                         {"cluster": config.cluster.name, "node": config.node.name, "version": __version__})
        # The alert on lease seconds left scales with it (contrib/prometheus).
        self.metrics.set("lease_ttl_seconds", "dcs.ttl: the lease's time to live.", float(config.dcs.ttl))
        # Answers about our role read the gate's fence word when they are given; the report's own
        # facts count for /replica and /health only while younger than a lease.
        self.board = StatusBoard(self.gate.admits_now, stale_after=float(int(config.dcs.ttl)),
                                 gate_report=lambda: gate_workers_report(self.gate))

        dcs = config.dcs
        self.lock = open_lock_of(config)
        self.http_token = read_secret(config.http.token_file, "http.token_file")
        self.catalog: ConsulCatalog | None = None
        if config.discovery.consul_agent:
            self.catalog = ConsulCatalog(
                config.discovery.consul_agent,
                ServiceIdentity(config.cluster.name, config.node.name, config.node.address, gate_port),
                check_ttl=max(dcs.ttl, 2.0), token=read_secret(dcs.acl_token_file, "dcs.acl_token_file"),
            )
        self.keeper = LeaseKeeper(self.lock, self.gate, self.wake, renew_interval=config.renew_interval)
        self.db = DbSensor(self.monitor, self.mysql, self.credentials, self.wake)
        self.dcs = DcsSensor(self.lock, self.wake, poll=1.0)
        self.identity = NodeIdentity(
            cluster=config.cluster.name, node=config.node.name, address=config.node.address,
            gate_port=gate_port, mysql_host=config.mysql.host, mysql_port=config.mysql.port,
            priority=config.node.priority, version=__version__, api_url=api_url_of(config))
        self.api_tls = api_tls_of(config)
        rejoin = config.rejoin
        self.repair = RepairKeeper(
            mode=rejoin.mode, state_dir=Path(config.node.state_dir), node=config.node.name, mysql=self.mysql,
            control=MysqldControl(pid_file=Path(config.mysql.pid_file),
                                  start_command=tuple(rejoin.start_command),
                                  start_timeout=rejoin.start_timeout, binlog_tool=rejoin.binlog_tool),
            on_done=self._record_repair, api_token=self.http_token, backup_tool=rejoin.backup_tool,
            mbstream_tool=rejoin.mbstream_tool, api_tls=self.api_tls.client, mutual_tls=self.api_tls.mutual,
            free_space_margin=rejoin.free_space_margin_mib << 20, keep_old_datadirs=rejoin.keep_old_datadirs,
            approval_ttl=rejoin.approval_ttl)
        self.db.settle_discard = self.repair.settle_discard
        tail = BinlogTailSaver(state_dir=Path(config.node.state_dir), node=config.node.name, mysql=self.mysql,
                               tool=rejoin.binlog_tool)
        self.restarter = MysqldRestarter(mode=rejoin.mode, node=config.node.name, control=self.repair.control,
                                         mysql=self.mysql, save_tail=tail.save, remember=tail.remember,
                                         start_failure=tail.start_failure,
                                         failed_marker=Path(config.node.state_dir) / FAILED_MARKER)
        self.executor = Executor(
            identity=self.identity, keeper=self.keeper, lock=self.lock, gate=self.gate, mysql=self.mysql,
            monitor=self.monitor, db=self.db, dcs=self.dcs, replication=self.replication,
            catalog=self.catalog, publish_etcd_primary=dcs.kind == "etcd" and config.discovery.etcd_key,
            metrics=self.metrics, semi_sync_timeout_ms=config.failover.semi_sync_timeout_ms,
            relay_wait_timeout=config.failover.relay_wait_timeout,
            accounts_check=self.check_app_accounts, repair=self.repair, lossless=config.failover.lossless,
            # A repoint waits this long per round for the new source (partitioned, maybe).
            source_read_budget=min(1.0, dcs.ttl / 6), token_write_ended=self.backoff_cut.set)
        self.executor.mysqld_down_reason = self.restarter.down_reason  # in the member record's reasons
        # While mysqld stays down after a crash: the binlog state its files hold (issue 16, seed 443).
        self.disk_state = DiskStateReader(node=config.node.name, tool=rejoin.binlog_tool,
                                          location=lambda: tail.location)
        self.repair.on_disk = self.disk_state.view
        self.failsafe: FailsafeAdapter | None = None
        if config.failover.failsafe:  # the configuration requires the cluster token or mutual TLS
            try:
                self.failsafe = FailsafeAdapter(
                    config=self.core_config, cluster=config.cluster.name, token=self.http_token,
                    state_dir=Path(config.node.state_dir), wake=self.wake, dcs=self.dcs,
                    state_of=lambda: self.state, lease_of=self._lease_view,
                    request_timeout=max(0.2, min(1.0, config.renew_interval / 2)),
                    extend_gate=self._extend_gate_on_promises,
                    unreachable_since=self._unreachable_since, tls=self.api_tls.client)
            except PromiseBookError as exc:
                raise AgentStartError(f"failover.failsafe: {exc}") from None
            self.executor.promise_book = self.failsafe.book
            self.executor.promise_client = self.failsafe.client
        self.http: HttpApi | None = None
        self.observer = Observer(
            config, state_of=lambda: self.state, members=self.members, dcs=self.dcs, db=self.db,
            gate=self.gate, keeper=self.keeper, monitor=self.monitor, executor=self.executor,
            repair=self.repair, failsafe=self.failsafe)
        self.status = StatusPublisher(
            identity=self.identity, metrics=self.metrics, board=self.board, gate=self.gate,
            keeper=self.keeper, monitor=self.monitor, db=self.db, dcs=self.dcs, members=self.members,
            executor=self.executor, repair=self.repair, lock=self.lock, failsafe=self.failsafe,
            restarter=self.restarter)

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
                                on_promise=None if self.failsafe is None else self.failsafe.answer,
                                tls=self.api_tls.server, mutual=self.api_tls.mutual).start()
        self.keeper.start()
        self.db.start()
        self.dcs.start()
        log.info(json.dumps({"event": "started", "node": self.identity.node, "cluster": self.identity.cluster,
                             "gate_port": self.gate.port, "kernel_forwarding": self.gate.kernel_forwarding,
                             "remote_path": self.gate.remote_path, "version": __version__}))

    def request_stop(self, *_: object) -> None:
        self.stopping.set()
        self.backoff_cut.set()
        self.wake.set()

    def run(self) -> None:
        ready = False
        # STARTING counts from the first round, not from building the parts: a running primary's
        # adoption waits at most two TTLs for its facts, and starting the gate workers can take
        # seconds on a loaded host (seen: the wait was over before the first round).
        self.state = State.initial(time.monotonic())
        while not self.stopping.is_set():
            self.backoff_cut.clear()  # what ends during this round's actions still cuts its back-off
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
                self._give_back_library_pages()
            self.notifier.watchdog()
            backoff = self.executor.backoff.after_round(decision.actions)
            if backoff > 0:
                # The same actions again achieved nothing; their own failures wake the loop (the
                # keeper's, say), so only a stop request or the end of a fencing-token write (its
                # effect, which the next round observes) cuts this wait short.
                self.backoff_cut.wait(backoff)
            delay = max(0.0, min(decision.next_wakeup - time.monotonic(), 1.0))
            self.wake.wait(delay)
            self.wake.clear()
        self.shutdown()

    def _give_back_library_pages(self) -> None:
        """Once, after the first round: the DCS client is open, the gate's workers are forked
        (they never map these pages: a fork leaves file pages to fault in the child), and what
        only loading touched is done (dbfence.pageout)."""
        if not self.config.node.page_out_libraries:
            return
        result = page_out_libraries()
        log.info(json.dumps({"event": "library_pages", "node": self.identity.node,
                             "mappings": result.mappings, "resident_before_kib": result.rss_before_kib,
                             "resident_after_kib": result.rss_after_kib}))

    def step(self) -> Decision:
        """One round: observe, decide, act, publish status."""
        started = time.monotonic()
        observation = self.observer.observe()
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
                                 "holds": holdings(observation)}))
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
        repair = self.repair.view()  # now, not as observed: this round's actions may have started one
        self.restarter.tick(self.state.role, killed_by_fence=repair.awaiting_restart,
                            repair_running=repair.running, former_primary=self.repair.fence_pending())
        facts = self.db.latest
        self.disk_state.tick(down=self.restarter.down_after_crash,
                             live=(facts.binlog_state, "" if facts.position is None else str(facts.position)))
        self.last_decision = decision
        self.status.publish(observation, decision, self.state)
        self.metrics.observe("decision_round_seconds", "How long a decision round takes: observe, "
                             "decide, act (a slow action holds up every later decision).",
                             time.monotonic() - started)
        return decision

    def _repair_role_change(self, old: Role, new: Role) -> None:
        """Evidence for [rejoin]: read when a primary fences, spent once it serves again."""
        if new is Role.FENCING and old in (Role.PRIMARY, Role.PROMOTING):
            self.repair.on_fencing()
        elif serves_again(old, new):
            self.repair.on_serving()
        elif old is Role.PROMOTING:  # overtaken: stepped down before writing; no term to watch
            self.repair.on_stepped_down()

    def _probe_role(self) -> ProbeRole:
        """Which probes fit: the heartbeat write only on an admitting primary, replication checks
        only where replication is configured (a promoting node is read-only for a moment)."""
        if self.state.role is Role.PRIMARY:
            return ProbeRole.PRIMARY
        if self.state.role in (Role.REPLICA, Role.CANDIDATE) and self.db.latest.replica_status is not None:
            return ProbeRole.REPLICA
        return ProbeRole.FENCED

    # ------------------------------------------------------------------ operator commands
    def handle_command(self, command: str, args: dict[str, str]) -> CommandResult:
        if command == APPROVE_REBUILD:
            return approve_rebuild(self.repair, args)
        return answer_command(self.lock, self.identity.node, self.config.failover.max_lag, command, args)

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

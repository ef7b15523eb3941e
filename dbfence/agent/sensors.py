"""The agent's eyes: background threads that keep the latest view of mysqld and of the DCS.

The decision loop never waits on a probe or a DCS read: each sensor runs on its own thread, with
its own timeouts, and leaves an immutable snapshot the loop picks up. Every I/O error becomes part
of the snapshot (a verdict, ``reachable=False``), never an exception in the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from dbfence.agent.gtid import GtidPosition as CorePosition
from dbfence.agent.observation import ErrantCheck, HealthVerdict, ReplicationState
from dbfence.locks.base import LeaseLock
from dbfence.locks.errors import LockError
from dbfence.locks.model import ClusterSnapshot, HistoryEntry
from dbfence.mysql.actions import GtidPositions, MysqlActions
from dbfence.mysql.connection import Endpoint, Timeouts
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.errors import MysqlAdapterError
from dbfence.mysql.facts import FactsReader, PeerBinlogState
from dbfence.mysql.flavour import ReplicaStatus
from dbfence.mysql.gtid import ErrantRange, GtidState
from dbfence.mysql.monitor import HealthMonitor, HealthObservation
from dbfence.mysql.probes import Role as ProbeRole
from dbfence.mysql.probes import judge_replica_status
from dbfence.mysql.token_discard import only_own_token_writes
from dbfence.mysql.verdict import ProbeKind, Reason, Verdict

log = logging.getLogger("dbfence.agent")


@dataclass(frozen=True, slots=True)
class PeerDatabase:
    """Where a peer's mysqld is, so replicas can follow it and check for errant GTIDs."""

    name: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class DbFacts:
    """The local database as of one probe round."""

    at: float
    health: HealthSummary
    read_only: bool | None = None
    position: CorePosition | None = None
    received: CorePosition | None = None  # Gtid_IO_Pos: what the relay log got (None: no replica)
    binlog_state: str = ""
    server_id: int | None = None
    fencing_token: int | None = None
    replication: ReplicationState = field(default_factory=ReplicationState)
    replica_status: ReplicaStatus | None = None
    # For status and metrics, what is true: how far behind its source this replica is, None when
    # unknown (a thread stopped, or not a replica), and why replication is not working. The
    # core's ``replication.lag_seconds`` is another quantity: the applier's backlog (0 once all
    # that was received is applied, even with the IO thread stopped).
    replica_lag_seconds: float | None = None
    replication_problem: str = ""
    replica_heartbeat_age: float | None = None  # seconds; read only when the probes do not read status
    errant_problem: str = ""  # why ``replication.errant`` is None while a holder is followed
    probe_summary: tuple[str, ...] = ()
    semi_sync_primary: bool | None = None
    semi_sync_replica: bool | None = None
    semi_sync_clients: int | None = None  # replicas connected that acknowledge (primary side)
    # When a lossless primary last had no replica to acknowledge: a heartbeat stuck then, and
    # still tripped while it recovers, is a wait for replicas, not a sick database.
    semi_sync_starved_at: float | None = None
    # How many times mysqld was seen to restart since the agent started (its start time moved).
    restarts: int = 0
    error: str = ""
    read_at: float = 0.0  # when the read of these facts began (monotonic): the newer read wins


def _to_core(position: object) -> CorePosition | None:
    try:
        return CorePosition.parse(str(position))
    except ValueError:
        return None


def relay_applied(status: ReplicaStatus | None, current: CorePosition | None) -> bool:
    """Everything the IO thread received is applied (vacuously true when not replicating)."""
    if status is None:
        return True
    received = _to_core(status.received_gtid_pos)
    if received is None or current is None:
        return False
    return current.covers(received)


class DbSensor:
    """Runs the health monitor every round and reads the facts the core needs."""

    def __init__(self, monitor: HealthMonitor, actions: MysqlActions, credentials: Credentials,
                 wake: threading.Event, *, errant_interval: float = 1.0) -> None:
        self._monitor = monitor
        self._actions = actions
        self._credentials = credentials
        self._wake = wake
        self._stop = threading.Event()
        self._errant_interval = errant_interval
        self._desired_role = ProbeRole.REPLICA
        self._errant_peer: PeerDatabase | None = None
        self._source_of: Callable[[str, int], str | None] = lambda host, port: None
        # Finishes a token discard that stopped half way, given the holder's binlog state; says why
        # the errant check must wait ("": none pending). Set by the agent (RepairKeeper.settle_discard).
        self.settle_discard: Callable[[GtidState], str] = lambda primary: ""
        self._last_errant: tuple[float, ErrantCheck | None] = (0.0, None)
        # ((run of mysqld, errant set), only own tokens?): a fenced node's errant set stays put,
        # and reading its binlog events once per set is enough.
        self._token_verdict: tuple[tuple[int, tuple[str, ...]], bool] | None = None
        # After a failed read: (when to ask again, the delay that doubles while reads fail).
        self._token_retry: tuple[float, float] = (0.0, 0.0)
        settings = monitor.settings
        # Without the probes' own replica status read, the facts' read is judged here (see _round).
        self._judges_replica_status = not settings.replica_status
        self._reader = FactsReader(actions,
                                   heartbeat_age=self._judges_replica_status and settings.heartbeat_lag)
        # Short timeouts (one trivial read): while the holder's host is frozen every round waits
        # this long, and a replica notices the new holder, to repoint to it, only after the wait.
        self._peer_state = PeerBinlogState(credentials, Timeouts(connect_s=1.0, read_s=1.0, write_s=1.0))
        self._instance_started: float | None = None
        self._restarts = 0
        self.latest = DbFacts(at=time.monotonic(), health=HealthSummary())
        self._facts_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="dbfence-db-sensor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._peer_state.close()

    def want_role(self, role: ProbeRole) -> None:
        """The probes to run follow the agent's role (the heartbeat write only on a primary)."""
        self._desired_role = role

    def follow(self, peer: PeerDatabase | None, source_of: Callable[[str, int], str | None]) -> None:
        """The current lock holder's database (errant checks), and how to name a replication source."""
        self._errant_peer = peer
        self._source_of = source_of

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._round()
            except Exception:  # the sensor must survive anything; the verdict says unhealthy
                log.exception("database sensor round failed")
                self.latest = DbFacts(at=time.monotonic(), health=HealthSummary(
                    tripped=(("sensor", "database sensor failed"),)))
                self._wake.set()
            self._stop.wait(max(0.0, self._monitor_next_delay()))

    def refresh_facts(self) -> None:
        """Re-read the facts (not the probes) now, after the loop changed mysqld, so the next
        decision sees the effect instead of asking for the same action again."""
        latest = self.latest
        self._install(self._read_facts(latest.at, latest.health, latest.probe_summary))

    def mark_unreachable(self, error: str) -> None:
        """The loop's action just found mysqld not answering: publish that instead of re-reading
        (a hung mysqld would make the re-read wait for its own connect timeout first)."""
        latest = self.latest
        self._install(DbFacts(at=latest.at, health=latest.health, probe_summary=latest.probe_summary,
                              error=error, read_at=time.monotonic(), restarts=self._restarts))

    def _install(self, facts: DbFacts) -> DbFacts:
        """Publish ``facts`` unless a read that began later is already published (a probe round
        that started before the loop's refresh would undo what the loop saw its action do, and
        the loop would repeat the action); then only the probe verdicts are taken from it."""
        with self._facts_lock:
            latest = self.latest
            if facts.read_at < latest.read_at:
                facts = replace(latest, at=facts.at, health=facts.health, probe_summary=facts.probe_summary)
            self.latest = facts
            return latest

    def _monitor_next_delay(self) -> float:
        return self._monitor.settings.interval_s - (time.monotonic() - self.latest.at)

    def _round(self) -> None:
        self._monitor.set_role(self._desired_role)
        observation = self._monitor.observe()
        health = summarize(observation)
        summary = tuple(_summary_line(v) for v in observation.latest_verdicts())
        read_started = time.monotonic()
        stopped = next((v for v in observation.verdicts if v.reason is Reason.PROCESS_STOPPED), None)
        if stopped is not None:
            # A stopped mysqld (SIGSTOP, a frozen host) cannot answer: the facts read would wait out
            # its 2 s timeout every round, and tripping takes 3 rounds (soak seed 401: the primary
            # fenced 6.3 s after its mysqld stopped instead of about 0.6 s).
            facts = DbFacts(at=observation.at_monotonic, health=health, probe_summary=summary,
                            error=f"not asked: {stopped.detail}", read_at=read_started,
                            restarts=self._restarts)
        else:
            facts = self._read_facts(observation.at_monotonic, health, summary)
        if self._judges_replica_status and observation.role is ProbeRole.REPLICA and not facts.error:
            # REPLICATION is steered, not health (_STEERED): the verdict is for status, and the
            # status row it judges is the one the facts read after the positions.
            verdict = judge_replica_status(facts.replica_status, self._monitor.settings.max_replica_lag_s,
                                           time.monotonic() - read_started, facts.replica_heartbeat_age)
            facts = replace(facts, probe_summary=(*summary, _summary_line(verdict)))
        previous = self._install(facts)
        facts = self.latest
        changed = (facts.health != previous.health or facts.read_only != previous.read_only
                   or facts.replication != previous.replication
                   or facts.fencing_token != previous.fencing_token)
        if changed:
            self._wake.set()

    def _read_facts(self, at: float, health: HealthSummary, summary: tuple[str, ...]) -> DbFacts:
        read_at = time.monotonic()
        try:
            raw = self._reader.read()
        except MysqlAdapterError as exc:
            return DbFacts(at=at, health=health, probe_summary=summary, error=str(exc), read_at=read_at,
                           restarts=self._restarts)
        status, positions = raw.replica_status, raw.positions
        current = _to_core(positions.current_pos)
        source = None
        if status is not None:
            source = self._source_of(status.primary_host, status.primary_port) or \
                f"{status.primary_host}:{status.primary_port}"
        applied = relay_applied(status, current)
        # The core wants how far the applier is behind what was received. Seconds_Behind_Master
        # is NULL while the IO thread is disconnected (a dead primary!), yet with everything
        # received applied there is nothing left to lag behind.
        lag: float | None = None
        if status is None or applied:
            lag = 0.0
        elif status.seconds_behind is not None:
            lag = float(status.seconds_behind)
        errant, errant_problem = self._errant_check(positions)
        replication = ReplicationState(
            source=source,
            running=status is not None and status.io_running == "Yes" and status.sql_running == "Yes",
            # "Connecting" counts: a thread retrying a frozen source gets its binlog once it thaws.
            receiving=status is not None and status.io_running != "No",
            source_connected=status is not None and status.io_running == "Yes",
            relay_log_applied=applied,
            lag_seconds=lag,
            errant=errant,
            errant_problem=errant_problem,
        )
        return DbFacts(
            at=at, health=health, read_only=raw.read_only, position=current,
            received=_to_core(status.received_gtid_pos) if status is not None else None,
            binlog_state=str(positions.binlog_state), server_id=raw.server_id,
            fencing_token=raw.fencing_token, replication=replication, replica_status=status,
            replica_lag_seconds=None if status is None else status.lag_seconds,
            replication_problem="" if status is None else status.problem, errant_problem=errant_problem,
            replica_heartbeat_age=raw.heartbeat_age,
            probe_summary=summary, semi_sync_primary=raw.semi_sync_primary,
            semi_sync_replica=raw.semi_sync_replica, semi_sync_clients=raw.semi_sync_clients,
            semi_sync_starved_at=at if raw.semi_sync_primary and raw.semi_sync_clients == 0
            else self.latest.semi_sync_starved_at,
            restarts=self._count_restart(raw.started_at),
            read_at=read_at,
        )

    def _count_restart(self, started_at: float) -> int:
        """A mysqld that restarted faster than the probes could trip is still a crashed primary:
        its crash recovery may have rolled back transactions a replica already has."""
        if self._instance_started is None:
            self._instance_started = started_at
        elif abs(started_at - self._instance_started) > 2.0:  # uptime has 1 s resolution
            self._instance_started = started_at
            self._restarts += 1
        return self._restarts

    def _errant_check(self, local: GtidPositions) -> tuple[ErrantCheck | None, str]:
        """Compare our history with the holder's binlog state: local read first, then remote, so
        anything the holder wrote in between cannot look like ours. Returns the check, or None
        and why there is none ("" when no holder is followed)."""
        peer = self._errant_peer
        if peer is None:
            return None, ""
        checked_at, last = self._last_errant
        recent = time.monotonic() - checked_at < self._errant_interval
        if last is not None and last.against == peer.name and recent:
            return last, ""
        try:
            remote_state: GtidState = self._peer_state.read(Endpoint(peer.host, peer.port))
        except MysqlAdapterError as exc:
            # unknown: the core waits rather than guess
            return None, f"cannot read {peer.name}'s binlog state: {exc}"
        # An empty binlog with a stale gtid_slave_pos looks clean: no check while the discard that
        # left it is unfinished (discard_intent.py), and none on the state read before it finished.
        pending = self.settle_discard(remote_state)
        if pending:
            return None, pending
        ranges = local.history.errant_against(remote_state)
        gtids = tuple(str(r) for r in ranges)
        check = ErrantCheck(against=peer.name, gtids=gtids,
                            only_own_tokens=self._only_own_tokens(ranges, gtids))
        self._last_errant = (time.monotonic(), check)
        return check, ""

    def _only_own_tokens(self, ranges: Sequence[ErrantRange], gtids: tuple[str, ...]) -> bool:
        """Whether every errant transaction is this server's own fencing-token write (the
        adapter reads their binlog events); False when mysqld could not say, asked again after a
        delay that doubles (1 s to 60 s) while the reads fail."""
        if not ranges:
            return False
        key = (self._restarts, gtids)
        if self._token_verdict is not None and self._token_verdict[0] == key:
            return self._token_verdict[1]
        retry_at, delay = self._token_retry
        now = time.monotonic()
        if now < retry_at:
            return False
        try:
            why = only_own_token_writes(self._actions, ranges)
        except MysqlAdapterError:
            delay = min(max(delay * 2, 1.0), 60.0)
            self._token_retry = (now + delay, delay)
            return False
        self._token_retry = (0.0, 0.0)
        self._token_verdict = (key, not why)
        return not why


def _summary_line(verdict: Verdict) -> str:
    return f"{verdict.kind.value}: {'ok' if verdict.ok else verdict.reason.value} {verdict.detail}".strip()


# read_only and replication are states the core observes and steers itself (it sets read_only,
# it checks relay log and lag before racing); a mismatch there is not a sick database. A replica
# whose primary just died must still count as healthy, or nobody could take over.
_STEERED = frozenset({ProbeKind.READ_ONLY, ProbeKind.REPLICATION})


@dataclass(frozen=True, slots=True)
class HealthSummary:
    """Trips after hysteresis, and probes that have not passed yet since the last role change."""

    tripped: tuple[tuple[str, str], ...] = ()  # (probe kind, why)
    unconfirmed: tuple[str, ...] = ("not probed yet",)

    def verdict(self, *, require_confirmation: bool, writes_await_replicas: bool = False) -> HealthVerdict:
        """A node that holds or takes the lock is unhealthy only once a probe has tripped (N
        failures in a row); a node that wants to race must also have seen every probe pass once,
        so a freshly started agent never races on probes that have not answered yet.

        ``writes_await_replicas``: lossless mode with no semi-sync replica connected. Every commit
        then waits for a replica, by design; the heartbeat write timing out says nothing about
        this server, and failing over would not help (right after a promotion the replicas are
        still repointing). The stall is reported, not treated as a sick database.
        """
        reasons = [why for kind, why in self.tripped
                   if not (writes_await_replicas and kind == ProbeKind.WRITE.value)]
        if require_confirmation and self.unconfirmed:
            reasons.append("not yet confirmed: " + ", ".join(self.unconfirmed))
        return HealthVerdict(healthy=not reasons, reasons=tuple(reasons))


def summarize(observation: HealthObservation) -> HealthSummary:
    tripped = tuple(
        (t.kind.value, f"{t.kind.value} tripped: {t.reason.value}"
         + (f" ({t.trip_verdict.detail})" if t.trip_verdict and t.trip_verdict.detail else ""))
        for t in observation.health.tripped if t.kind not in _STEERED)
    unconfirmed = tuple(sorted(k.value for k in observation.unconfirmed - _STEERED))
    return HealthSummary(tripped=tripped, unconfirmed=unconfirmed)


@dataclass(frozen=True, slots=True)
class DcsView:
    """The latest DCS snapshot (None while unreachable), when it was taken, and history facts."""

    at: float
    snapshot: ClusterSnapshot | None
    error: str = ""
    last_failover_wall: float | None = None
    history: tuple[HistoryEntry, ...] = field(default_factory=tuple)
    history_read: bool = False  # ``history`` was read from the DCS at least once
    attempted: bool = True  # False only before the first read has finished (or failed)

    @property
    def new_cluster(self) -> bool | None:
        """No history at all in the DCS: no agent ever led this cluster (None: not read yet)."""
        return not self.history if self.history_read else None


# Member record fields that move with replication progress alone.
_PROGRESS_FIELDS = {"gtid_position": "", "gtid_received": "", "gtid_binlog_state": "", "last_seen": 0.0,
                    "lag_seconds": None}


def progress_only(before: ClusterSnapshot, after: ClusterSnapshot) -> bool:
    """``after`` differs from ``before`` only in members' replication progress (positions, lag,
    publication time): the same lock, intent and members, each in the same role and state."""
    if (before.lock, before.intent, before.problems) != (after.lock, after.intent, after.problems):
        return False
    if len(before.members) != len(after.members):
        return False
    return all(
        (a.key, a.session_id, replace(a.record, **_PROGRESS_FIELDS))  # type: ignore[arg-type]
        == (b.key, b.session_id, replace(b.record, **_PROGRESS_FIELDS))  # type: ignore[arg-type]
        for a, b in zip(before.members, after.members, strict=True))


class DcsSensor:
    """Keeps the cluster snapshot fresh: a watch wakes it on any change under the cluster prefix."""

    RETRY_FIRST = 0.2  # seconds before reading again after a failed read, doubling up to:
    RETRY_LIMIT = 1.0

    def __init__(self, lock: LeaseLock, wake: threading.Event, *, poll: float = 1.0) -> None:
        self._lock = lock
        self._wake = wake
        self._poll = poll
        self._stop = threading.Event()
        self.latest = DcsView(at=time.monotonic(), snapshot=None, error="not read yet", attempted=False)
        self._history_index = -1
        # The newest history read (None: none succeeded yet) and the history index it was read at.
        self._history: tuple[HistoryEntry, ...] | None = None
        self._history_read_index = -1
        self._publish = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="dbfence-dcs-sensor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def refresh(self) -> None:
        """Read now (after our own write, so the next decision sees it)."""
        self._read()

    def _read(self) -> int | None:
        try:
            # The lock's TTL left is for display (dbfence locks/status read their own snapshot).
            snapshot = self._lock.snapshot(strict=False, lease_ttl=False)
        except LockError as exc:
            was_reachable = self.latest.snapshot is not None
            self.latest = DcsView(at=time.monotonic(), snapshot=None, error=str(exc),
                                  last_failover_wall=self.latest.last_failover_wall,
                                  history=self.latest.history, history_read=self.latest.history_read)
            if was_reachable:  # the loop sees "unreachable" once, not at every failed retry
                self._wake.set()
            return None
        # Only a new history entry changes the history; where the backend cannot say when one
        # was written, any change may be one.
        history_index = snapshot.index if snapshot.history_index is None else snapshot.history_index
        if history_index != self._history_index:
            try:
                entries = self._lock.read_history(limit=20)
                with self._publish:
                    # Kept apart from each view: a read racing this one (the loop's refresh) that
                    # skipped the history must not publish an older copy: "no history" decides
                    # whether a running primary may be adopted (docs/decision-core.md).
                    if history_index >= self._history_read_index:
                        self._history, self._history_read_index = entries, history_index
                self._history_index = history_index
            except LockError:
                pass  # keep the previous history; it only feeds the cooldown and status
        with self._publish:
            current = self.latest.snapshot
            # Reads race (the watch thread and the loop's refresh after its own write): an older
            # snapshot must not replace a newer one, or our own fresh lock would look lost. Only
            # within a moment, though: an index that really went backwards (a DCS restored from a
            # snapshot) must be accepted on the next read, as Consul's docs ask of clients.
            racing = time.monotonic() - self.latest.at < 1.0
            if current is not None and snapshot.index < current.index and racing:
                return current.index
            if snapshot.problems and (current is None or current.problems != snapshot.problems):
                for problem in snapshot.problems:
                    log.warning("bad data in the DCS: %s", problem)
            history = self._history
            failovers = [e.at for e in history or () if e.kind in ("failover", "switchover")]
            self.latest = DcsView(at=time.monotonic(), snapshot=snapshot,
                                  last_failover_wall=max(failovers) if failovers else None,
                                  history=history or (), history_read=history is not None)
        # Members' replication progress moves with every heartbeat commit; waking the loop for it
        # made each agent publish its own new position, which woke the others: ~9 etcd writes a
        # second on an idle 3-node cluster. The loop reads the latest snapshot whenever it runs
        # (at least every poll interval, and at once for any other change).
        if current is None or not progress_only(current, snapshot):
            self._wake.set()
        return snapshot.index

    def _run(self) -> None:
        retry = self.RETRY_FIRST
        while not self._stop.is_set():
            index = self._read()
            if index is None:
                # Unreachable: retry soon, then less often (a DCS that is gone stays gone a while).
                self._stop.wait(retry)
                retry = min(self.RETRY_LIMIT, retry * 2)
                continue
            retry = self.RETRY_FIRST
            try:
                self._lock.wait_for_change(index, timeout=self._poll)
            except LockError:
                self._stop.wait(0.2)

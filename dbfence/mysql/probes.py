"""Health probes of the local mysqld, each with its own timeout, each answering with a Verdict.

Probes run in *lanes*: one worker thread (and, where needed, one connection) per lane. A round
starts every lane whose previous job has returned, then waits for each up to that lane's timeout.
A lane whose job is still running does not start another one: it answers "still running" at
once, as a failure with the lane's timeout reason. So a stuck write or a hung server can never
pile up threads or connections, and never delays the other probes.

Lanes and what they answer:

* ``process``: psutil on the pid file (PROCESS)
* ``disk``: free space on the data directory (DISK)
* ``connect``: a fresh connection to the client port, handshake and login (CONNECT)
* ``reserved``: the agent's reserved, always-open connection (preferably on MariaDB's
  ``extra_port``, which has its own connection budget): one SELECT of connection slots and
  read_only, then replica status on a replica (SELECT, CONNECTIONS, READ_ONLY, REPLICATION;
  REPLICATION only with ``ProbeSettings.replica_status``: the agent judges the replica status its
  facts read anyway, :func:`judge_replica_status`, instead of reading it twice a round)
* ``write``: a heartbeat row update on its own connection, primary only (WRITE). On timeout the
  statement is killed (KILL QUERY) from a separate short-lived connection.

The lanes themselves are in ``probe_lanes.py``; the probes that are plain functions (process,
disk, connect, the replication verdict) in ``probe_checks.py``, re-exported here.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dbfence.mysql.connection import (
    DbConnection,
    Endpoint,
    Timeouts,
    close_quietly,
    connect,
    query,
    query_one,
    server_version,
    thread_id,
)
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.errors import MysqlAdapterError, MysqlQueryError, MysqlUnavailableError
from dbfence.mysql.flavour import FlavourSql, sql_for
from dbfence.mysql.probe_checks import (
    MYSQLD_NAMES,
    judge_replica_status,
    probe_connect,
    probe_disk,
    probe_process,
    replication_verdict,
)
from dbfence.mysql.probe_lanes import JobResult, Lane
from dbfence.mysql.schema import HEARTBEAT_AGE, HEARTBEAT_UPSERT, ensure_schema
from dbfence.mysql.verdict import ProbeKind, Reason, Verdict

__all__ = [
    "MYSQLD_NAMES",
    "ProbeSettings",
    "Prober",
    "Role",
    "Target",
    "judge_replica_status",
    "probe_connect",
    "probe_disk",
    "probe_process",
    "replication_verdict",
]

_GIB = 1024**3


class Role(enum.Enum):
    PRIMARY = "primary"  # expects read_only OFF; write probe runs
    REPLICA = "replica"  # expects read_only ON and running replication
    FENCED = "fenced"  # read_only expected ON, no replication expected, no write probe


@dataclass(frozen=True)
class ProbeSettings:
    """Timeouts and thresholds. Defaults and the detection time they imply: docs/detection.md."""

    interval_s: float = 0.2
    process_timeout_s: float = 0.2
    disk_timeout_s: float = 0.5
    connect_timeout_s: float = 1.0  # crashes show as refusals at once; hangs are select's job
    select_timeout_s: float = 0.3
    write_timeout_s: float = 0.5
    # a heartbeat stuck this long is killed (KILL QUERY) so the lane can start afresh; until then
    # every round reports it as still running, and it completes by itself if the stall ends
    write_abandon_s: float = 5.0
    # the reserved/write connections give up on a silent server after this (then reconnect)
    session_read_timeout_s: float = 5.0
    disk_min_free_bytes: int = _GIB // 2
    disk_min_free_ratio: float = 0.01
    min_free_connection_slots: int = 1
    max_replica_lag_s: float = 30.0
    # also measure lag by the age of the primary's replicated heartbeat row (needs synced clocks)
    heartbeat_lag: bool = True
    # Read SHOW SLAVE STATUS on a replica and answer REPLICATION. The agent turns this off: its
    # facts read the same status every round (after the GTID positions, which keeps "relay log
    # applied" on the safe side) and judge it with judge_replica_status; a second read per round
    # was a fifth of the database sensor's work on a replica.
    replica_status: bool = True
    # While every probe passes promptly (HealthMonitor's calm rounds), the connect and disk probes
    # run every this many rounds instead of every round: a fresh login is the costliest probe of
    # an idle agent, and what it alone would catch (the client port refusing logins while the
    # reserved session works) is found at most this many rounds later. Any failure, late answer
    # or trip brings them back to every round. 1 = every round. docs/detection.md.
    idle_probe_every: int = 5


@dataclass(frozen=True)
class Target:
    """The local mysqld the agent watches."""

    endpoint: Endpoint  # the client port, as applications see it
    credentials: Credentials  # the agent's account
    pid_file: Path | None = None
    datadir: Path | None = None  # read from @@datadir when not set
    # where the reserved connection goes: MariaDB extra_port, or the client port
    reserved_endpoint: Endpoint | None = None


# ---------------------------------------------------------------------------------------------
# the reserved connection's checks (the single probes are in probe_checks.py)


def _status_query(flavour: FlavourSql) -> str:
    """The reserved connection's per-round statement: liveness, connection slots, read_only."""
    return (
        "SELECT @@global.max_connections AS max_conn, "
        f"{flavour.read_only_expression()} AS read_only, "
        "(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
        "WHERE VARIABLE_NAME = 'THREADS_CONNECTED') AS connected"
    )


def _read_only_verdict(read_only: bool, role: Role, elapsed: float) -> Verdict:
    detail = f"read_only {'ON' if read_only else 'OFF'} as {role.value}"
    if role is Role.PRIMARY and read_only:
        return Verdict.failed(ProbeKind.READ_ONLY, Reason.READ_ONLY_ON, detail, elapsed)
    if role is not Role.PRIMARY and not read_only:
        return Verdict.failed(ProbeKind.READ_ONLY, Reason.READ_ONLY_OFF, detail, elapsed)
    return Verdict.passed(ProbeKind.READ_ONLY, detail, elapsed)


# ---------------------------------------------------------------------------------------------


class Prober:
    """All probes of one local mysqld, run in non-blocking lanes.

    Call :meth:`run_round` once per ``settings.interval_s`` from one thread; it returns within
    ``interval_s``, whatever the server does. :meth:`close` stops the lanes and closes the
    connections.
    """

    def __init__(
        self, target: Target, settings: ProbeSettings | None = None, role: Role = Role.REPLICA
    ) -> None:
        self.target = target
        self.settings = settings or ProbeSettings()
        self._role = role
        self._lock = threading.Lock()
        self._reserved: DbConnection | None = None
        self._writer: DbConnection | None = None
        self._writer_thread_id: int | None = None
        self._flavour: FlavourSql | None = None
        self._datadir = target.datadir
        # mysqld's @@max_connections as last read (each round, on the reserved connection), for
        # the gate's backend cap; None until read once.
        self.max_connections: int | None = None
        s = self.settings
        if s.idle_probe_every < 1:
            raise ValueError(f"idle_probe_every must be >= 1, got {s.idle_probe_every}")
        # rounds each occasional lane was left out of since it last started (calm rounds only)
        self._idle_skips = {"connect": 0, "disk": 0}
        self._round_lanes: tuple[Lane, ...] = ()  # the lanes the last round started or collected
        self._lanes = {
            "process": Lane("process", (ProbeKind.PROCESS,), Reason.PROCESS_STOPPED, s.process_timeout_s),
            "disk": Lane("disk", (ProbeKind.DISK,), Reason.DISK_UNREADABLE, s.disk_timeout_s),
            "connect": Lane(
                "connect",
                (ProbeKind.CONNECT,),
                Reason.CONNECT_TIMEOUT,
                s.connect_timeout_s,
                repeat_while_running=False,
            ),
            "reserved": Lane("reserved", (ProbeKind.SELECT,), Reason.QUERY_TIMEOUT, s.select_timeout_s),
            "write": Lane(
                "write",
                (ProbeKind.WRITE,),
                Reason.WRITE_TIMEOUT,
                s.write_timeout_s,
                abandon_after_s=s.write_abandon_s,
                on_abandon=self._kill_stuck_write,
            ),
        }

    # -- public -----------------------------------------------------------------------------

    @property
    def role(self) -> Role:
        return self._role

    def set_role(self, role: Role) -> None:
        """Switch which probes run and what read_only is expected (takes effect next round)."""
        self._role = role
        if role is not Role.PRIMARY:
            with self._lock:
                close_quietly(self._writer)
                self._writer, self._writer_thread_id = None, None

    def expected_kinds(self, role: Role | None = None) -> frozenset[ProbeKind]:
        """The probe kinds a round produces for ``role`` (default: the current role)."""
        role = role or self._role
        kinds = {
            ProbeKind.CONNECT,
            ProbeKind.SELECT,
            ProbeKind.DISK,
            ProbeKind.CONNECTIONS,
            ProbeKind.READ_ONLY,
        }
        if self.target.pid_file is not None:
            kinds.add(ProbeKind.PROCESS)
        if role is Role.PRIMARY:
            kinds.add(ProbeKind.WRITE)
        if role is Role.REPLICA and self.settings.replica_status:
            kinds.add(ProbeKind.REPLICATION)
        return frozenset(kinds)

    def pending(self) -> bool:
        """A probe of the last round is still running: it answered neither in time nor late."""
        return any(lane.pending for lane in self._round_lanes)

    def agent_connection_ids(self) -> frozenset[int]:
        """Server thread ids of the agent's own probe sessions: spare them when killing clients."""
        with self._lock:
            ids = set()
            for conn in (self._reserved, self._writer):
                if conn is not None and conn.open:
                    ids.add(thread_id(conn))
            return frozenset(ids)

    def run_round(self, *, calm: bool = False) -> list[Verdict]:
        """Run one round of the current role's probes; returns within ``interval_s``.

        A probe that has not answered yet and is not past its own timeout gives no verdict in this
        round; it is collected in a later one. ``calm`` (the previous round had every probe pass
        in good time): the connect and disk probes start only every
        ``settings.idle_probe_every`` rounds (a late answer of theirs is still collected).
        """
        now = time.monotonic()
        role = self._role
        started: list[Lane] = []
        plan: list[tuple[str, Callable[[], JobResult]]] = [
            ("reserved", lambda: self._reserved_probes(role)),
            (
                "connect",
                lambda: [
                    probe_connect(
                        self.target.endpoint, self.target.credentials, self.settings.connect_timeout_s
                    )
                ],
            ),
        ]
        if self.target.pid_file is not None:
            pid_file = self.target.pid_file
            plan.append(("process", lambda: [probe_process(pid_file)]))
        if role is Role.PRIMARY:
            plan.append(("write", self._write_probe))
        plan.append(("disk", self._disk_probe))
        for name, work in plan:
            lane = self._lanes[name]
            started.append(lane)
            if name in self._idle_skips:
                if calm and self._idle_skips[name] + 1 < self.settings.idle_probe_every:
                    self._idle_skips[name] += 1
                    continue
                self._idle_skips[name] = 0
            lane.start(work, now)
        self._round_lanes = tuple(started)
        round_end = now + self.settings.interval_s
        verdicts: list[Verdict] = []
        for lane in started:
            verdicts.extend(lane.collect(round_end))
        return verdicts

    def close(self) -> None:
        for lane in self._lanes.values():
            lane.close()
        with self._lock:
            close_quietly(self._reserved)
            close_quietly(self._writer)
            self._reserved = self._writer = None

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lanes ------------------------------------------------------------------------------

    def _session_timeouts(self) -> Timeouts:
        s = self.settings
        return Timeouts(s.connect_timeout_s, s.session_read_timeout_s, s.session_read_timeout_s)

    def _reserved_conn(self) -> DbConnection:
        with self._lock:
            conn = self._reserved
        if conn is not None and conn.open:
            return conn
        endpoint = self.target.reserved_endpoint or self.target.endpoint
        conn = connect(endpoint, self.target.credentials, self._session_timeouts())
        if self._flavour is None:
            self._flavour = sql_for(server_version(conn))
        if self._datadir is None:
            self._datadir = Path(str(query_one(conn, "SELECT @@datadir AS d")["d"]))
        with self._lock:
            self._reserved = conn
        return conn

    def _drop_reserved(self) -> None:
        with self._lock:
            close_quietly(self._reserved)
            self._reserved = None

    def _reserved_probes(self, role: Role) -> JobResult:
        started = time.monotonic()

        def elapsed() -> float:
            return time.monotonic() - started

        try:
            conn = self._reserved_conn()
            assert self._flavour is not None
            flavour = self._flavour
            # One statement answers select, connections and read_only: each statement is a round
            # trip and a result to parse, several times a second, on every node.
            row = query_one(conn, _status_query(flavour))
        except MysqlUnavailableError as exc:
            self._drop_reserved()
            reason = Reason.QUERY_TIMEOUT if exc.reason is Reason.QUERY_TIMEOUT else exc.reason
            return [Verdict.failed(ProbeKind.SELECT, reason, exc.detail, elapsed())]
        except MysqlAdapterError as exc:
            self._drop_reserved()
            return [Verdict.failed(ProbeKind.SELECT, Reason.QUERY_FAILED, str(exc), elapsed())]
        verdicts = [
            Verdict.passed(ProbeKind.SELECT, "SELECT answered", elapsed()),
            self._connections_verdict(row, elapsed()),
            _read_only_verdict(bool(int(str(row["read_only"]))), role, elapsed()),
        ]
        if role is not Role.REPLICA or not self.settings.replica_status:
            return verdicts
        try:
            rows = query(conn, flavour.replica_status_query())
            replica_row = rows[0] if rows else None
            age = (self._heartbeat_age(conn, flavour, replica_row)
                   if replica_row and self.settings.heartbeat_lag else None)
            verdicts.append(
                replication_verdict(replica_row, flavour, self.settings.max_replica_lag_s, elapsed(), age)
            )
        except MysqlAdapterError as exc:
            # the status select worked; a later query failed: report it on SELECT so it counts
            if isinstance(exc, MysqlUnavailableError):
                self._drop_reserved()
            verdicts.append(Verdict.failed(ProbeKind.SELECT, Reason.QUERY_FAILED, str(exc), elapsed()))
            verdicts = [v for v in verdicts if not (v.kind is ProbeKind.SELECT and v.ok)]
        return verdicts

    def _heartbeat_age(self, conn: DbConnection, flavour: FlavourSql, row: dict[str, object]) -> float | None:
        """Age of the replicated heartbeat of this replica's primary; None if it has none yet."""
        primary_id = flavour.parse_replica_status(row).primary_server_id
        try:
            rows = query(conn, HEARTBEAT_AGE, (primary_id,))
        except MysqlQueryError:
            return None  # no dbfence schema yet
        return float(rows[0]["age"]) if rows and rows[0]["age"] is not None else None

    def _connections_verdict(self, row: dict[str, object], elapsed: float) -> Verdict:
        max_conn, connected = int(str(row["max_conn"])), int(str(row["connected"]))
        self.max_connections = max_conn
        free = max_conn - connected
        detail = f"{connected} of {max_conn} connections in use"
        if free < self.settings.min_free_connection_slots:
            return Verdict.failed(ProbeKind.CONNECTIONS, Reason.TOO_MANY_CONNECTIONS, detail, elapsed)
        return Verdict.passed(ProbeKind.CONNECTIONS, detail, elapsed)

    def _disk_probe(self) -> JobResult:
        if self._datadir is None:
            return []  # learned from @@datadir once the reserved connection is up
        s = self.settings
        return [probe_disk(self._datadir, s.disk_min_free_bytes, s.disk_min_free_ratio)]

    def _write_probe(self) -> JobResult:
        started = time.monotonic()
        try:
            with self._lock:
                conn = self._writer
            if conn is None or not conn.open:
                # via the reserved endpoint too: exhausted client slots are the connections
                # probe's finding, and must not also look like a write failure
                endpoint = self.target.reserved_endpoint or self.target.endpoint
                conn = connect(endpoint, self.target.credentials, self._session_timeouts())
                # server-side bounds too, so a lock wait ends even if our KILL never arrives
                query(conn, "SET SESSION lock_wait_timeout = 10, innodb_lock_wait_timeout = 10")
                # CREATE ... IF NOT EXISTS is binlogged even when nothing changes: on a read-only
                # server (a restarted primary) it would be an errant transaction.
                if not int(query_one(conn, "SELECT @@global.read_only AS ro")["ro"]):
                    ensure_schema(conn)
                with self._lock:
                    self._writer, self._writer_thread_id = conn, thread_id(conn)
            query(conn, HEARTBEAT_UPSERT)
            if conn.affected_rows() == 0:  # type: ignore[no-untyped-call]
                return [Verdict.failed(ProbeKind.WRITE, Reason.READ_ONLY_ON,
                                       "read_only is ON: heartbeat not written", time.monotonic() - started)]
        except MysqlAdapterError as exc:
            with self._lock:
                close_quietly(self._writer)
                self._writer = None
            reason = Reason.WRITE_FAILED
            if isinstance(exc, MysqlUnavailableError) and exc.reason is Reason.QUERY_TIMEOUT:
                reason = Reason.WRITE_TIMEOUT
            if isinstance(exc, MysqlUnavailableError) and exc.reason is Reason.TOO_MANY_CONNECTIONS:
                reason = Reason.TOO_MANY_CONNECTIONS
            return [Verdict.failed(ProbeKind.WRITE, reason, str(exc), time.monotonic() - started)]
        return [Verdict.passed(ProbeKind.WRITE, "heartbeat committed", time.monotonic() - started)]

    def _kill_stuck_write(self) -> None:
        """KILL QUERY the stuck heartbeat from a short-lived connection, off the round's thread."""
        with self._lock:
            thread_id = self._writer_thread_id
        if thread_id is None:
            return
        endpoint = self.target.reserved_endpoint or self.target.endpoint
        timeouts = Timeouts(self.settings.connect_timeout_s, 2.0, 2.0)

        def kill() -> None:
            conn = None
            try:
                conn = connect(endpoint, self.target.credentials, timeouts)
                query(conn, f"KILL QUERY {int(thread_id)}")
            except MysqlAdapterError:
                pass  # the server is unreachable: the write connection's read timeout frees the lane
            finally:
                close_quietly(conn)

        threading.Thread(target=kill, name="dbfence-kill-write", daemon=True).start()

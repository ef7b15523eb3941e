"""Role actions on one mysqld: fence, promote, repoint, rejoin, and the reads they depend on.

The session plumbing is in ``action_session.py``; stopping replication and applying the relay log
in ``relay_log.py`` (:class:`MysqlActions` inherits both).

Every method opens its own short-lived connection (actions are rare, and a fresh session carries
no state from an earlier failure), runs plain blocking PyMySQL calls with timeouts, and raises a
typed error from :mod:`dbfence.mysql.errors` on failure.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from dbfence.mysql import schema
from dbfence.mysql.accounts import check_app_account
from dbfence.mysql.action_session import GONE_CODES
from dbfence.mysql.connection import (
    DbConnection,
    query,
    query_one,
)
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.errors import (
    ErrantTransactionsError,
    MysqlAdapterError,
    MysqlQueryError,
    UnsafeOnReplicaError,
)
from dbfence.mysql.flavour import ReplicaStatus
from dbfence.mysql.gtid import (
    ErrantRange,
    Gtid,
    GtidParseError,
    GtidPosition,
    GtidState,
    in_errant_ranges,
    parse_binlog_gtid_event,
    parse_binlog_gtid_list,
    ranges_predate,
)
from dbfence.mysql.relay_log import RelayLogControl
from dbfence.mysql.relay_log_room import require_relay_log_room

DEFAULT_SEMI_SYNC_TIMEOUT_MS = 86_400_000  # one day: "lossless" must not quietly become async


@dataclass(frozen=True)
class GtidPositions:
    """The GTID variables of one server, read in one statement."""

    binlog_pos: GtidPosition
    slave_pos: GtidPosition
    current_pos: GtidPosition
    binlog_state: GtidState

    @property
    def history(self) -> GtidState:
        """Every (domain, server) stream this node has applied or written."""
        return GtidState.from_sources(self.binlog_state, self.slave_pos)


@dataclass(frozen=True)
class SemiSyncSettings:
    """Lossless semi-sync: AFTER_SYNC wait point, and a timeout long enough to never fall back."""

    timeout_ms: int = DEFAULT_SEMI_SYNC_TIMEOUT_MS


@dataclass(frozen=True)
class KilledSession:
    id: int
    user: str
    host: str
    command: str


@dataclass(frozen=True)
class PrimaryAddress:
    """Where a replica should replicate from, and with which replication account."""

    host: str
    port: int
    replication: Credentials
    name: str = ""

    def __str__(self) -> str:
        return self.name or f"{self.host}:{self.port}"


class MysqlActions(RelayLogControl):
    """Actions on the mysqld at ``endpoint``, as the agent account ``credentials``."""

    # -- reads ----------------------------------------------------------------------------

    def read_only(self) -> bool:
        with self.session() as conn:
            return bool(int(query_one(conn, self.sql.read_only_query())["read_only"]))

    def replica_status(self) -> ReplicaStatus | None:
        with self.session() as conn:
            rows = query(conn, self.sql.replica_status_query())
        return self.sql.parse_replica_status(rows[0]) if rows else None

    def gtid_positions(self) -> GtidPositions:
        self._require_mariadb("reading GTID positions")
        statement = (
            "SELECT @@global.gtid_binlog_pos AS binlog_pos, @@global.gtid_slave_pos AS slave_pos, "
            "@@global.gtid_current_pos AS current_pos, @@global.gtid_binlog_state AS binlog_state"
        )
        with self.session() as conn:
            row = query_one(conn, statement)
        try:
            return GtidPositions(
                binlog_pos=GtidPosition.parse(row["binlog_pos"]),
                slave_pos=GtidPosition.parse(row["slave_pos"]),
                current_pos=GtidPosition.parse(row["current_pos"]),
                binlog_state=GtidState.parse(row["binlog_state"]),
            )
        except GtidParseError as exc:
            raise MysqlQueryError(
                statement, None, f"{self.name} returned a GTID we cannot read: {exc}"
            ) from None

    def read_fencing_token(self) -> schema.FencingRecord | None:
        with self.session() as conn:
            try:
                return schema.read_fencing_token(conn)
            except MysqlQueryError as exc:
                if exc.code in (1049, 1146):  # no schema / no table yet
                    return None
                raise

    def semi_sync_status(self) -> dict[str, object]:
        with self.session() as conn:
            return dict(query_one(conn, self.sql.semi_sync_status_query()))

    def semi_sync_clients(self) -> int:
        """How many semi-sync replicas are connected now (0 when the plugin is not loaded)."""
        with self.session(read_timeout_s=1.0) as conn:
            rows = query(conn, self.sql.semi_sync_clients_query())
        return int(str(rows[0]["Value"])) if rows else 0

    def check_app_account(self, app_user: str) -> None:
        """Raise UnsafeAccountError if ``app_user`` can write through read_only."""
        with self.session() as conn:
            check_app_account(conn, app_user, self.sql)

    # -- fencing ----------------------------------------------------------------------------

    def set_read_only(self, on: bool) -> None:
        with self.session() as conn:
            self._run(conn, self.sql.set_read_only(on))

    def kill_client_connections(
        self, keep_ids: Collection[int] = (), keep_users: Collection[str] = ()
    ) -> tuple[KilledSession, ...]:
        """Kill every client session except ours, ``keep_ids``, replication and system threads."""
        with self.session() as conn:
            return self._kill_clients(conn, keep_ids, keep_users)

    def _kill_clients(
        self, conn: DbConnection, keep_ids: Collection[int], keep_users: Collection[str] = ()
    ) -> tuple[KilledSession, ...]:
        sql = self.sql
        killed: list[KilledSession] = []
        rows = query(
            conn,
            "SELECT ID AS id, USER AS user, HOST AS host, COMMAND AS command "
            "FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID()",
        )
        for row in rows:
            session = KilledSession(
                int(row["id"]), str(row["user"]), str(row["host"] or ""), str(row["command"])
            )
            if (
                session.id in keep_ids
                or session.user in keep_users
                or session.user in ("system user", "event_scheduler", "")
                or session.command in sql.replication_commands
            ):
                continue
            try:
                query(conn, f"KILL CONNECTION {session.id}")
            except MysqlQueryError as exc:
                if exc.code not in GONE_CODES:
                    raise
                continue
            killed.append(session)
        return tuple(killed)

    def fence(self, keep_ids: Collection[int] = (), timeout_s: float = 2.0) -> tuple[KilledSession, ...]:
        """Cut client sessions, set read_only ON, cut again; returns every session killed.

        Sessions go first: ``SET GLOBAL read_only`` waits for commits in progress, and a commit
        waiting for a semi-sync ack that never comes would hold it for the whole semi-sync
        timeout. A killed waiter's client gets an error, never an OK, so no write is
        acknowledged that the replicas lack. Semi-sync is left on: switching it off would release
        waiting commits with an OK.

        One session with a short read timeout: on a hung mysqld each step would otherwise wait the
        full timeout (three handshakes of 5 s measured on a SIGSTOPped server), and the lock is
        released only once the fence is complete or mysqld is seen to be unreachable.
        """
        with self.session(read_timeout_s=timeout_s) as conn:
            killed = list(self._kill_clients(conn, keep_ids))
            self._run(conn, self.sql.set_read_only(True))
            # A killed session may still be listed (command "Killed") on this same connection:
            # the second pass is for sessions that arrived meanwhile, not for those again.
            killed += self._kill_clients(conn, {*keep_ids, *(session.id for session in killed)})
        return tuple(killed)

    # -- replication (stopping, applying the relay log: RelayLogControl) ---------------------

    def set_semi_sync_primary(self, settings: SemiSyncSettings | None) -> None:
        """Lossless semi-sync on the primary side (None = off)."""
        with self.session() as conn:
            timeout = settings.timeout_ms if settings else DEFAULT_SEMI_SYNC_TIMEOUT_MS
            self._run(conn, self.sql.semi_sync_primary(settings is not None, timeout))

    def set_semi_sync_replica(self, enabled: bool) -> None:
        """Semi-sync replica side; restarts a running IO thread so the change takes effect."""
        with self.session() as conn:
            self._run(conn, self.sql.semi_sync_replica(enabled))
            rows = query(conn, self.sql.replica_status_query())
            if rows and self.sql.parse_replica_status(rows[0]).io_running != "No":
                self._run(conn, self.sql.restart_io_thread())

    def ensure_schema(self) -> None:
        """Create the dbfence schema here; refused on a replica (it would be an errant write)."""
        with self.session() as conn:
            self._ensure_schema(conn)

    def _ensure_schema(self, conn: DbConnection) -> None:
        if query(conn, self.sql.replica_status_query()):
            raise UnsafeOnReplicaError(
                f"{self.name} replicates from a primary: creating the dbfence schema here would write "
                "GTIDs the primary lacks; create it on the primary"
            )
        schema.ensure_schema(conn)

    def write_fencing_token(self, token: int, holder: str, read_timeout_s: float | None = None) -> None:
        """Record the lock's fencing token in dbfence.fencing (replicates to every replica).

        With lossless semi-sync on it returns once a replica acknowledged it: give a
        ``read_timeout_s`` as long as that may take (see :mod:`dbfence.mysql.token_writer`).
        """
        with self.session(read_timeout_s=read_timeout_s) as conn:
            self.write_fencing_token_in(conn, token, holder)

    def write_fencing_token_in(self, conn: DbConnection, token: int, holder: str) -> None:
        """:meth:`write_fencing_token` in the caller's session (whose id it may need to end it)."""
        self._ensure_schema(conn)
        schema.write_fencing_token(conn, token, holder)

    def end_session(self, session_id: int) -> None:
        """KILL one session of ours; gone already is fine. A commit it waited on for a semi-sync
        ack ends its wait and commits (measured): counted in ``Rpl_semi_sync_master_no_tx``."""
        with self.session() as conn:
            try:
                query(conn, f"KILL CONNECTION {int(session_id)}")
            except MysqlQueryError as exc:
                if exc.code not in GONE_CODES:
                    raise

    def promote(
        self,
        *,
        semi_sync: SemiSyncSettings | None,
        apply_relay_log_timeout_s: float | None = 30.0,
    ) -> GtidPositions:
        """Make this replica the writable primary.

        Order: stop receiving, apply what was received, drop the replication config, lossless
        semi-sync on, read_only off. The fencing token is written afterwards
        (:meth:`write_fencing_token`, by :class:`~dbfence.mysql.token_writer.FencingTokenWriter`):
        under semi-sync, like every commit of this primary, so a crash before any replica
        received it leaves it in doubt and crash recovery removes it. Written before semi-sync
        was on, it committed unacknowledged and no repair could remove it.
        """
        self._require_mariadb("promote")
        sql = self.sql
        status = self.replica_status()
        if status is not None:
            with self.session() as conn:
                self._stop_io_thread(conn)
            self.lift_apply_delay()
            if apply_relay_log_timeout_s is not None:
                self.wait_relay_log_applied(apply_relay_log_timeout_s)
        with self.session() as conn:
            self._run(conn, [sql.stop_replica(), sql.reset_replica_all()])
            self._run(conn, sql.semi_sync_replica(False))
            # The token write needs the tables; made here, before semi-sync, never as a DDL binlogged
            # behind commits that wait for an ack (crash recovery would refuse to start).
            self._ensure_schema(conn)
        self.set_semi_sync_primary(semi_sync)
        self.set_read_only(False)
        return self.gtid_positions()

    def errant_against(self, primary_state: GtidState) -> tuple[ErrantRange, ...]:
        """GTIDs this node has that a primary with ``primary_state`` lacks."""
        return self.gtid_positions().history.errant_against(primary_state)

    def list_errant_gtids(
        self, ranges: tuple[ErrantRange, ...], max_events: int = 1_000_000
    ) -> tuple[Gtid, ...]:
        """The exact GTIDs of ``ranges`` found in this node's binlogs, newest file first.

        MariaDB keeps only the last sequence per (domain, server) stream, and sequences are shared
        by every server of a domain, so a range can hold gaps; the binlog says which exist. Stops
        at the first file whose starting Gtid_list shows no older file can hold one, or after
        ``max_events`` events.
        """
        if not ranges:
            return ()
        found: list[Gtid] = []
        budget = max_events
        with self.session(read_timeout_s=60.0) as conn:
            logs = [str(row["Log_name"]) for row in query(conn, "SHOW BINARY LOGS")]
            for log in reversed(logs):
                if budget <= 0:
                    break
                events = query(conn, "SHOW BINLOG EVENTS IN %s LIMIT %s", (log, budget))
                budget -= len(events)
                starts_before = False
                for event in events:
                    kind, info = str(event["Event_type"]), str(event["Info"] or "")
                    if kind == "Gtid_list":
                        starts_before = ranges_predate(parse_binlog_gtid_list(info), ranges)
                    elif kind == "Gtid":
                        gtid = parse_binlog_gtid_event(info)
                        if gtid is not None and in_errant_ranges(gtid, ranges):
                            found.append(gtid)
                if starts_before:
                    break
        return tuple(sorted(set(found)))

    def repoint(
        self,
        primary: PrimaryAddress,
        primary_state: GtidState,
        *,
        semi_sync_replica: bool,
        former_primary: bool | None = None,
        heartbeat_s: float = 1.0,
        connect_retry_s: int = 1,
        keep_ids: Collection[int] = (),
        apply_timeout_s: float = 1.0,
        around_switch_off: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        """Replicate from ``primary`` by GTID, after refusing if this node has errant GTIDs.

        A configured replica first stops receiving and, when the new primary has all it received,
        applies its whole relay log: in GTID mode CHANGE MASTER deletes the relay log, and what
        it received but had not applied may be acknowledged commits that only this node and a
        holder that can still fail hold (soak seed 11: lost when the new primary failed right
        after). If that takes longer than
        ``apply_timeout_s`` (a blocked applier), it raises GtidWaitTimeoutError with the applier
        still running and the relay log kept; the next attempt goes on from there.

        ``primary_state`` is the new primary's ``gtid_binlog_state`` (see
        :meth:`gtid_positions`). ``former_primary`` (auto-detected when None: no replication
        configured) makes the node start from its own binlog position, since its
        ``gtid_slave_pos`` still points at where it stopped replicating long ago. ``keep_ids``
        are the agent's own sessions, spared if client sessions must be cut. ``around_switch_off``
        runs the switch-off of semi-sync's primary side (MariaDB counts it as a fallback), so that
        the caller can count it as its own. It refuses, changing nothing, with
        RelayLogDiskFullError while the relay log's disk is full (see :mod:`relay_log_room`).
        """
        self._require_mariadb("repoint")
        sql = self.sql
        positions = self.gtid_positions()
        errant = positions.history.errant_against(primary_state)
        if errant:
            try:
                exact = self.list_errant_gtids(errant)
            except MysqlAdapterError:
                exact = ()  # the ranges alone still name them; the refusal matters more
            raise ErrantTransactionsError(self.name, str(primary), errant, exact)
        with self.session() as conn:  # a full disk would stall the new IO thread (relay_log_room)
            require_relay_log_room(conn, self.name)
        if int(str(self.semi_sync_status()["primary_enabled"])):
            # a lossless primary until now: cut sessions first so that turning semi-sync off
            # cannot release a waiting commit with an OK (see fence)
            self.fence(keep_ids)
            if around_switch_off is None:
                self.set_semi_sync_primary(None)
            else:
                around_switch_off(lambda: self.set_semi_sync_primary(None))
        else:
            self.set_read_only(True)
        with self.session(read_timeout_s=max(self.timeouts.read_s, apply_timeout_s + 5.0)) as conn:
            configured = bool(query(conn, sql.replica_status_query()))
            if former_primary is None:
                former_primary = not configured
            if configured:
                self._stop_io_thread(conn)  # the old primary may be frozen
                self._apply_relay_log_the_primary_has(conn, primary_state, apply_timeout_s)
                query(conn, sql.stop_replica())
            if former_primary:
                start = positions.binlog_pos.merged_latest(positions.slave_pos)
                query(conn, "SET GLOBAL gtid_slave_pos = %s", (str(start),))
            statement, params = sql.change_primary(
                host=primary.host,
                port=primary.port,
                user=primary.replication.user,
                password=primary.replication.password,
                heartbeat_s=heartbeat_s,
                retry_s=connect_retry_s,
            )
            query(conn, statement, params)
            self._run(conn, sql.semi_sync_replica(semi_sync_replica))
            query(conn, sql.start_replica())

    def rejoin(
        self,
        primary: PrimaryAddress,
        primary_state: GtidState,
        *,
        semi_sync_replica: bool,
        keep_ids: Collection[int] = (),
    ) -> None:
        """A former primary comes back as a replica, or is refused with its errant GTIDs named."""
        self.repoint(
            primary,
            primary_state,
            semi_sync_replica=semi_sync_replica,
            former_primary=True,
            keep_ids=keep_ids,
        )

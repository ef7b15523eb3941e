"""The facts the agent reads from its own mysqld every round, over one kept connection.

A handful of statements (variables, replica status, fencing token, semi-sync clients) at several
rounds a second: a fresh connection per fact would cost more than the facts.

The order matters: the GTID positions are read before the replica status, so "everything received
is applied" (the applied position read first covers what had been received by the later read) can
only err towards "not yet". The agent's probes judge this same status read
(:func:`dbfence.mysql.probes.judge_replica_status`) instead of reading it again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from dbfence.mysql.actions import GtidPositions, MysqlActions
from dbfence.mysql.connection import (
    DbConnection,
    Endpoint,
    Timeouts,
    close_quietly,
    connect,
    query,
    query_one,
)
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.errors import MysqlAdapterError, MysqlQueryError, MysqlUnavailableError
from dbfence.mysql.flavour import FlavourSql, ReplicaStatus
from dbfence.mysql.gtid import GtidParseError, GtidPosition, GtidState
from dbfence.mysql.schema import HEARTBEAT_AGE, SCHEMA
from dbfence.mysql.verdict import Reason

_VARIABLES = (
    "SELECT @@global.read_only AS read_only, @@server_id AS server_id, "
    "@@global.gtid_binlog_pos AS binlog_pos, @@global.gtid_slave_pos AS slave_pos, "
    "@@global.gtid_current_pos AS current_pos, @@global.gtid_binlog_state AS binlog_state, "
    "@@global.rpl_semi_sync_master_enabled AS semi_primary, "
    "@@global.rpl_semi_sync_slave_enabled AS semi_replica, "
    "(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
    "WHERE VARIABLE_NAME = 'UPTIME') AS uptime, "
    "(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
    "WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_CLIENTS') AS semi_clients"
)
_FENCING_TOKEN = f"SELECT token FROM {SCHEMA}.fencing WHERE id = 1"
_PEER_BINLOG_STATE = "SELECT @@global.gtid_binlog_state AS binlog_state"


@dataclass(frozen=True, slots=True)
class RawFacts:
    read_only: bool
    server_id: int
    positions: GtidPositions
    replica_status: ReplicaStatus | None
    fencing_token: int | None
    semi_sync_primary: bool
    semi_sync_replica: bool
    semi_sync_clients: int | None
    # When mysqld started (monotonic), from Uptime and the moment it was read: later statements
    # of the same read can block for seconds (SHOW SLAVE STATUS behind a STOP SLAVE), and
    # subtracting Uptime from a later clock reading made a slow read look like a restart.
    started_at: float
    # How old the replica's copy of its source's heartbeat row is (seconds); None when not read,
    # not a replica, or no heartbeat yet.
    heartbeat_age: float | None = None


def read_facts(conn: DbConnection, sql: FlavourSql, *, heartbeat_age: bool = False) -> RawFacts:
    """One round of facts on ``conn`` (MariaDB's GTID variables); ``heartbeat_age``: on a replica,
    also how old its source's replicated heartbeat is (for the REPLICATION verdict)."""
    row = query_one(conn, _VARIABLES)
    started_at = time.monotonic() - float(row["uptime"] or 0)
    try:
        positions = GtidPositions(
            binlog_pos=GtidPosition.parse(row["binlog_pos"]),
            slave_pos=GtidPosition.parse(row["slave_pos"]),
            current_pos=GtidPosition.parse(row["current_pos"]),
            binlog_state=GtidState.parse(row["binlog_state"]),
        )
    except GtidParseError as exc:
        raise MysqlQueryError("gtid positions", None, f"unreadable GTID: {exc}") from None
    rows = query(conn, sql.replica_status_query())
    status = sql.parse_replica_status(rows[0]) if rows else None
    age = None
    if heartbeat_age and status is not None:
        age = _heartbeat_age(conn, status.primary_server_id)
    try:
        token_rows = query(conn, _FENCING_TOKEN)
        token = int(token_rows[0]["token"]) if token_rows else None
    except MysqlQueryError:
        token = None  # no dbfence schema before the first promotion
    semi_primary = bool(int(row["semi_primary"]))
    clients = None
    if semi_primary:
        clients = int(str(row["semi_clients"] or 0))
    return RawFacts(read_only=bool(int(row["read_only"])), server_id=int(row["server_id"]),
                    positions=positions, replica_status=status, fencing_token=token,
                    semi_sync_primary=semi_primary, semi_sync_replica=bool(int(row["semi_replica"])),
                    semi_sync_clients=clients, started_at=started_at, heartbeat_age=age)


def _heartbeat_age(conn: DbConnection, primary_server_id: int) -> float | None:
    try:
        rows = query(conn, HEARTBEAT_AGE, (primary_server_id,))
    except MysqlQueryError:
        return None  # no dbfence schema yet
    return float(rows[0]["age"]) if rows and rows[0]["age"] is not None else None


class FactsReader:
    """Reads every fact of a round over one kept connection (a few statements, no reconnects)."""

    def __init__(self, actions: MysqlActions, *, heartbeat_age: bool = False) -> None:
        self._actions = actions
        self._heartbeat_age = heartbeat_age
        self._conn: DbConnection | None = None
        self._mutex = threading.Lock()  # the sensor thread and the loop's refresh share it

    def read(self) -> RawFacts:
        with self._mutex:
            kept = self._conn is not None and self._conn.open
            try:
                return self._read_once()
            except MysqlAdapterError as exc:
                if not kept or _server_hung(exc):
                    raise
            # The kept connection was gone without notice: our own fence or repoint kills every
            # session but the probes' (right before the loop re-reads to see its effect), and so
            # does a mysqld restart or wait_timeout. That says nothing about mysqld now: ask
            # again once, on a fresh connection.
            return self._read_once()

    def _read_once(self) -> RawFacts:
        if self._conn is None or not self._conn.open:
            self._conn = connect(self._actions.endpoint, self._actions.credentials,
                                 Timeouts(connect_s=1.0, read_s=2.0, write_s=2.0))
        conn = self._conn
        try:
            return read_facts(conn, self._actions.sql, heartbeat_age=self._heartbeat_age)
        except MysqlAdapterError:
            close_quietly(conn)
            self._conn = None
            raise

    def close(self) -> None:
        with self._mutex:
            close_quietly(self._conn)
            self._conn = None


def _server_hung(exc: MysqlAdapterError) -> bool:
    """A statement that timed out: a second try would only wait as long again."""
    return isinstance(exc, MysqlUnavailableError) and exc.reason is Reason.QUERY_TIMEOUT


class PeerBinlogState:
    """Reads another server's ``gtid_binlog_state`` (the errant check) over one kept connection.

    A replica compares its history with the lock holder's about once a second: a fresh
    connection (handshake, login) each time cost more than the read.
    """

    def __init__(self, credentials: Credentials, timeouts: Timeouts) -> None:
        self._credentials = credentials
        self._timeouts = timeouts
        self._endpoint: Endpoint | None = None
        self._conn: DbConnection | None = None
        self._mutex = threading.Lock()  # the sensor thread and the loop's refresh share it

    def read(self, endpoint: Endpoint) -> GtidState:
        """The binlog state of ``endpoint``; raises MysqlAdapterError."""
        with self._mutex:
            return self._read(endpoint)

    def _read(self, endpoint: Endpoint) -> GtidState:
        if endpoint != self._endpoint:
            self.close()
            self._endpoint = endpoint
        kept = self._conn is not None and self._conn.open
        try:
            return self._read_once(endpoint)
        except MysqlAdapterError as exc:
            if not kept or _server_hung(exc):
                raise
        return self._read_once(endpoint)  # the kept session was gone (peer restarted): once more

    def _read_once(self, endpoint: Endpoint) -> GtidState:
        if self._conn is None or not self._conn.open:
            self._conn = connect(endpoint, self._credentials, self._timeouts)
        try:
            value = query_one(self._conn, _PEER_BINLOG_STATE)["binlog_state"]
        except MysqlAdapterError:
            close_quietly(self._conn)
            self._conn = None
            raise
        try:
            return GtidState.parse(str(value or ""))
        except GtidParseError as exc:
            raise MysqlQueryError(_PEER_BINLOG_STATE, None, f"{endpoint} returned a GTID we cannot read: "
                                  f"{exc}") from None

    def close(self) -> None:
        close_quietly(self._conn)
        self._conn = None
        self._endpoint = None

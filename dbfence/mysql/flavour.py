"""SQL that differs between MariaDB and MySQL, behind one small interface.

MariaDB (10.5+) is implemented fully and tested against MariaDB 10.11. The MySQL 8 variant is
written from the MySQL 8.0.23+ reference and is UNTESTED: no MySQL server is available here.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from dbfence.mysql.errors import UnsupportedServerError


class Flavour(enum.Enum):
    MARIADB = "mariadb"
    MYSQL = "mysql"


@dataclass(frozen=True)
class ServerVersion:
    flavour: Flavour
    version: tuple[int, int, int]
    text: str

    def __str__(self) -> str:
        return f"{self.flavour.value} {'.'.join(map(str, self.version))}"


_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)")


def parse_server_version(version_text: str) -> ServerVersion:
    """``SELECT VERSION()`` text -> flavour and version; refuses servers we cannot drive safely."""
    match = _VERSION.match(version_text)
    if match is None:
        raise UnsupportedServerError(f"cannot read a version from {version_text!r}")
    version = (int(match[1]), int(match[2]), int(match[3]))
    if "mariadb" in version_text.lower():
        if version < (10, 5, 2):
            raise UnsupportedServerError(
                f"MariaDB {version_text} is too old: dbfence needs 10.5.2+ "
                "(READ ONLY ADMIN, built-in semi-sync)"
            )
        return ServerVersion(Flavour.MARIADB, version, version_text)
    if version < (8, 0, 23):
        raise UnsupportedServerError(f"MySQL {version_text} is too old: dbfence needs 8.0.23+")
    return ServerVersion(Flavour.MYSQL, version, version_text)


@dataclass(frozen=True)
class ReplicaStatus:
    """The replica's view of its replication, flavour-neutral."""

    io_running: str  # "Yes", "No", "Connecting"
    sql_running: str
    last_io_errno: int
    last_io_error: str
    last_sql_errno: int
    last_sql_error: str
    seconds_behind: int | None  # None = unknown (SQL thread stopped, IO not connected)
    primary_host: str
    primary_port: int
    primary_server_id: int
    received_gtid_pos: str  # MariaDB Gtid_IO_Pos / MySQL Retrieved_Gtid_Set
    using_gtid: str
    apply_delay_s: int = 0  # MASTER_DELAY: a deliberately delayed replica
    relay_log_file: str = ""  # where the SQL thread is in the relay log
    relay_log_pos: int = 0

    @property
    def lag_seconds(self) -> float | None:
        """How far behind its source this replica is, or None when nobody can know: unless both
        threads run, Seconds_Behind_Master is NULL or (with everything received applied) a
        meaningless 0, while the source's newer binlog events are not even being fetched."""
        if self.problem or self.seconds_behind is None:
            return None
        return float(self.seconds_behind)

    @property
    def problem(self) -> str:
        """Why this replica is not replicating, "" when both threads run and the lag is known."""
        source = f"from {self.primary_host}:{self.primary_port}"
        if self.last_sql_errno:
            error = f"{self.last_sql_errno} {source}: {self.last_sql_error}"
            return f"replication_error: SQL thread error {error}"
        if self.sql_running != "Yes":
            return f"sql_thread_not_running: SQL thread {self.sql_running} {source}"
        if self.io_running != "Yes":
            error = f": error {self.last_io_errno} {self.last_io_error}" if self.last_io_errno else ""
            return f"io_thread_not_running: IO thread {self.io_running} {source}{error}"
        if self.seconds_behind is None:
            return f"lag_unknown: lag unknown {source}"
        return ""


class FlavourSql(Protocol):
    """Statements one flavour needs. Parameters use PyMySQL ``%s`` placeholders."""

    flavour: Flavour
    tested: bool
    # processlist COMMAND values of replication threads, never killed when fencing
    replication_commands: frozenset[str]
    # global privileges that let an account write through read_only
    write_through_read_only_privileges: frozenset[str]

    def set_read_only(self, on: bool) -> list[str]: ...
    def read_only_query(self) -> str: ...
    def read_only_expression(self) -> str: ...
    def replica_status_query(self) -> str: ...
    def parse_replica_status(self, row: Mapping[str, Any]) -> ReplicaStatus: ...
    def stop_replica(self) -> str: ...
    def start_replica(self) -> str: ...
    def restart_io_thread(self) -> list[str]: ...
    def stop_io_thread(self) -> str: ...
    def io_thread_sessions_query(self) -> str: ...
    def reset_replica_all(self) -> str: ...
    def change_primary(
        self, *, host: str, port: int, user: str, password: str, heartbeat_s: float, retry_s: int
    ) -> tuple[str, tuple[Any, ...]]: ...
    def gtid_wait(self, position: str, timeout_s: float) -> tuple[str, tuple[Any, ...]]: ...
    def semi_sync_primary(self, enabled: bool, timeout_ms: int) -> list[str]: ...
    def semi_sync_replica(self, enabled: bool) -> list[str]: ...
    def semi_sync_status_query(self) -> str: ...
    def semi_sync_clients_query(self) -> str: ...


def _int(value: Any) -> int:
    return int(value) if value not in (None, "") else 0


class MariaDBSql:
    flavour = Flavour.MARIADB
    tested = True
    replication_commands = frozenset({"Binlog Dump", "Slave_IO", "Slave_SQL", "Slave_worker", "Daemon"})
    write_through_read_only_privileges = frozenset({"SUPER", "READ ONLY ADMIN", "ALL PRIVILEGES"})

    def set_read_only(self, on: bool) -> list[str]:
        return [f"SET GLOBAL read_only = {'ON' if on else 'OFF'}"]

    def read_only_query(self) -> str:
        return f"SELECT {self.read_only_expression()} AS read_only"

    def read_only_expression(self) -> str:
        """read_only as one SQL expression, 1 when writes are refused (for combined selects)."""
        return "@@global.read_only"

    def replica_status_query(self) -> str:
        return "SHOW SLAVE STATUS"

    def parse_replica_status(self, row: Mapping[str, Any]) -> ReplicaStatus:
        behind = row.get("Seconds_Behind_Master")
        return ReplicaStatus(
            io_running=str(row.get("Slave_IO_Running") or "No"),
            sql_running=str(row.get("Slave_SQL_Running") or "No"),
            last_io_errno=_int(row.get("Last_IO_Errno")),
            last_io_error=str(row.get("Last_IO_Error") or ""),
            last_sql_errno=_int(row.get("Last_SQL_Errno")),
            last_sql_error=str(row.get("Last_SQL_Error") or ""),
            seconds_behind=None if behind is None else int(behind),
            primary_host=str(row.get("Master_Host") or ""),
            primary_port=_int(row.get("Master_Port")),
            primary_server_id=_int(row.get("Master_Server_Id")),
            received_gtid_pos=str(row.get("Gtid_IO_Pos") or ""),
            using_gtid=str(row.get("Using_Gtid") or ""),
            apply_delay_s=_int(row.get("SQL_Delay")),
            relay_log_file=str(row.get("Relay_Log_File") or ""),
            relay_log_pos=_int(row.get("Relay_Log_Pos")),
        )

    def stop_replica(self) -> str:
        return "STOP SLAVE"

    def start_replica(self) -> str:
        return "START SLAVE"

    def restart_io_thread(self) -> list[str]:
        return ["STOP SLAVE IO_THREAD", "START SLAVE IO_THREAD"]

    def stop_io_thread(self) -> str:
        return "STOP SLAVE IO_THREAD"

    def io_thread_sessions_query(self) -> str:
        return "SELECT ID AS id FROM information_schema.PROCESSLIST WHERE COMMAND = 'Slave_IO'"

    def reset_replica_all(self) -> str:
        return "RESET SLAVE ALL"

    def change_primary(
        self, *, host: str, port: int, user: str, password: str, heartbeat_s: float, retry_s: int
    ) -> tuple[str, tuple[Any, ...]]:
        return (
            "CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, MASTER_PASSWORD = %s, "
            "MASTER_USE_GTID = slave_pos, MASTER_HEARTBEAT_PERIOD = %s, MASTER_CONNECT_RETRY = %s",
            (host, int(port), user, password, float(heartbeat_s), int(retry_s)),
        )

    def gtid_wait(self, position: str, timeout_s: float) -> tuple[str, tuple[Any, ...]]:
        # returns 0 when reached, -1 on timeout
        return "SELECT MASTER_GTID_WAIT(%s, %s) AS reached", (position, float(timeout_s))

    def semi_sync_primary(self, enabled: bool, timeout_ms: int) -> list[str]:
        if not enabled:
            return ["SET GLOBAL rpl_semi_sync_master_enabled = OFF"]
        return [
            "SET GLOBAL rpl_semi_sync_master_wait_point = AFTER_SYNC",
            f"SET GLOBAL rpl_semi_sync_master_timeout = {int(timeout_ms)}",
            # keep waiting even when no replica is connected: no silent fall back to async
            "SET GLOBAL rpl_semi_sync_master_wait_no_slave = ON",
            "SET GLOBAL rpl_semi_sync_master_enabled = ON",
        ]

    def semi_sync_replica(self, enabled: bool) -> list[str]:
        return [f"SET GLOBAL rpl_semi_sync_slave_enabled = {'ON' if enabled else 'OFF'}"]

    def semi_sync_status_query(self) -> str:
        return (
            "SELECT @@global.rpl_semi_sync_master_enabled AS primary_enabled, "
            "@@global.rpl_semi_sync_slave_enabled AS replica_enabled, "
            "@@global.rpl_semi_sync_master_wait_point AS wait_point, "
            "@@global.rpl_semi_sync_master_timeout AS timeout_ms"
        )

    def semi_sync_clients_query(self) -> str:
        """The replicas connected now that can acknowledge a commit (column ``Value``)."""
        return "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_clients'"


class MySQL8Sql:
    """MySQL 8.0.23+. UNTESTED: written from the reference manual, no MySQL server here."""

    flavour = Flavour.MYSQL
    tested = False
    replication_commands = frozenset({"Binlog Dump", "Binlog Dump GTID", "Connect", "Query", "Daemon"})
    write_through_read_only_privileges = frozenset({"SUPER", "CONNECTION_ADMIN", "ALL PRIVILEGES"})

    def set_read_only(self, on: bool) -> list[str]:
        # super_read_only implies read_only; clearing read_only clears super_read_only
        return ["SET GLOBAL super_read_only = ON"] if on else ["SET GLOBAL read_only = OFF"]

    def read_only_query(self) -> str:
        return f"SELECT {self.read_only_expression()} AS read_only"

    def read_only_expression(self) -> str:
        return "@@global.read_only AND @@global.super_read_only"

    def replica_status_query(self) -> str:
        return "SHOW REPLICA STATUS"

    def parse_replica_status(self, row: Mapping[str, Any]) -> ReplicaStatus:
        behind = row.get("Seconds_Behind_Source")
        return ReplicaStatus(
            io_running=str(row.get("Replica_IO_Running") or "No"),
            sql_running=str(row.get("Replica_SQL_Running") or "No"),
            last_io_errno=_int(row.get("Last_IO_Errno")),
            last_io_error=str(row.get("Last_IO_Error") or ""),
            last_sql_errno=_int(row.get("Last_SQL_Errno")),
            last_sql_error=str(row.get("Last_SQL_Error") or ""),
            seconds_behind=None if behind is None else int(behind),
            primary_host=str(row.get("Source_Host") or ""),
            primary_port=_int(row.get("Source_Port")),
            primary_server_id=_int(row.get("Source_Server_Id")),
            received_gtid_pos=str(row.get("Retrieved_Gtid_Set") or ""),
            using_gtid=str(row.get("Auto_Position") or ""),
            apply_delay_s=_int(row.get("SQL_Delay")),
            relay_log_file=str(row.get("Relay_Log_File") or ""),
            relay_log_pos=_int(row.get("Relay_Log_Pos")),
        )

    def stop_replica(self) -> str:
        return "STOP REPLICA"

    def start_replica(self) -> str:
        return "START REPLICA"

    def restart_io_thread(self) -> list[str]:
        return ["STOP REPLICA IO_THREAD", "START REPLICA IO_THREAD"]

    def stop_io_thread(self) -> str:
        return "STOP REPLICA IO_THREAD"

    def io_thread_sessions_query(self) -> str:
        return ("SELECT PROCESSLIST_ID AS id FROM performance_schema.threads "
                "WHERE NAME = 'thread/sql/replica_io' AND PROCESSLIST_ID IS NOT NULL")

    def reset_replica_all(self) -> str:
        return "RESET REPLICA ALL"

    def change_primary(
        self, *, host: str, port: int, user: str, password: str, heartbeat_s: float, retry_s: int
    ) -> tuple[str, tuple[Any, ...]]:
        return (
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST = %s, SOURCE_PORT = %s, SOURCE_USER = %s, "
            "SOURCE_PASSWORD = %s, SOURCE_AUTO_POSITION = 1, SOURCE_HEARTBEAT_PERIOD = %s, "
            "SOURCE_CONNECT_RETRY = %s, GET_SOURCE_PUBLIC_KEY = 1",
            (host, int(port), user, password, float(heartbeat_s), int(retry_s)),
        )

    def gtid_wait(self, position: str, timeout_s: float) -> tuple[str, tuple[Any, ...]]:
        # returns 0 when reached, 1 on timeout
        return "SELECT -WAIT_FOR_EXECUTED_GTID_SET(%s, %s) AS reached", (position, float(timeout_s))

    def semi_sync_primary(self, enabled: bool, timeout_ms: int) -> list[str]:
        if not enabled:
            return ["SET GLOBAL rpl_semi_sync_source_enabled = OFF"]
        return [
            "SET GLOBAL rpl_semi_sync_source_wait_point = AFTER_SYNC",
            f"SET GLOBAL rpl_semi_sync_source_timeout = {int(timeout_ms)}",
            "SET GLOBAL rpl_semi_sync_source_wait_no_replica = ON",
            "SET GLOBAL rpl_semi_sync_source_enabled = ON",
        ]

    def semi_sync_replica(self, enabled: bool) -> list[str]:
        return [f"SET GLOBAL rpl_semi_sync_replica_enabled = {'ON' if enabled else 'OFF'}"]

    def semi_sync_status_query(self) -> str:
        return (
            "SELECT @@global.rpl_semi_sync_source_enabled AS primary_enabled, "
            "@@global.rpl_semi_sync_replica_enabled AS replica_enabled, "
            "@@global.rpl_semi_sync_source_wait_point AS wait_point, "
            "@@global.rpl_semi_sync_source_timeout AS timeout_ms"
        )

    def semi_sync_clients_query(self) -> str:
        return "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_source_clients'"


def sql_for(version: ServerVersion) -> FlavourSql:
    if version.flavour is Flavour.MARIADB:
        return MariaDBSql()
    return MySQL8Sql()

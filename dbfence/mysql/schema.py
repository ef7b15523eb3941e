"""The ``dbfence`` schema in mysqld: heartbeat rows and the fencing token.

Created on the primary only, so that it replicates: creating it on a replica would write GTIDs
the primary lacks (errant transactions), even with IF NOT EXISTS.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime

from dbfence.mysql.connection import DbConnection, query
from dbfence.mysql.errors import StaleFencingTokenError

SCHEMA = "dbfence"

BOOTSTRAP = (
    f"CREATE DATABASE IF NOT EXISTS {SCHEMA}",
    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.heartbeat ("
    " server_id INT UNSIGNED NOT NULL PRIMARY KEY,"
    " beat_at DATETIME(6) NOT NULL,"
    " beats BIGINT UNSIGNED NOT NULL"
    ") ENGINE=InnoDB",
    # one row: the current epoch; the history table keeps every token ever written
    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.fencing ("
    " id TINYINT UNSIGNED NOT NULL PRIMARY KEY,"
    " token BIGINT UNSIGNED NOT NULL,"
    " holder VARCHAR(255) NOT NULL,"
    " server_id INT UNSIGNED NOT NULL,"
    " written_at DATETIME(6) NOT NULL"
    ") ENGINE=InnoDB",
    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.fencing_history ("
    " token BIGINT UNSIGNED NOT NULL PRIMARY KEY,"
    " holder VARCHAR(255) NOT NULL,"
    " server_id INT UNSIGNED NOT NULL,"
    " written_at DATETIME(6) NOT NULL"
    ") ENGINE=InnoDB",
)

# Written only while the server is writable: the agent's account may hold privileges that write
# through read_only, and a heartbeat on a read-only server (a restarted or fenced primary) would be
# an errant transaction. With read_only ON the statement changes no row and logs nothing.
HEARTBEAT_UPSERT = (
    f"INSERT INTO {SCHEMA}.heartbeat (server_id, beat_at, beats) "
    "SELECT @@server_id, NOW(6), 1 FROM DUAL WHERE @@global.read_only = 0 "
    "ON DUPLICATE KEY UPDATE beat_at = VALUES(beat_at), beats = beats + 1"
)

HEARTBEAT_AGE = (
    f"SELECT TIMESTAMPDIFF(MICROSECOND, beat_at, NOW(6)) / 1000000 AS age FROM {SCHEMA}.heartbeat "
    "WHERE server_id = %s"
)


@dataclass(frozen=True)
class FencingRecord:
    token: int
    holder: str
    server_id: int
    written_at: datetime


def ensure_schema(conn: DbConnection) -> None:
    """Create the schema and tables if missing (idempotent). Call on the primary only.

    Nothing is run when they all exist: ``CREATE ... IF NOT EXISTS`` is binlogged (a GTID of its
    own) even when it changes nothing, and a DDL binlogged after commits that wait for an ack makes
    MariaDB's crash recovery refuse to truncate them, and refuse to start at all ("Cannot truncate
    the binary log ... unsafe statement ... Crash recovery failed"; seen when the write probe
    reconnected to a former primary right after SIGCONT, before it was read-only).
    """
    present = query(conn, "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = %s",
                    (SCHEMA,))
    if int(present[0]["n"]) >= len(BOOTSTRAP) - 1:  # every table (the first statement is the schema)
        return
    for statement in BOOTSTRAP:
        query(conn, statement)


def read_fencing_token(conn: DbConnection) -> FencingRecord | None:
    rows = query(
        conn,
        f"SELECT token, holder, server_id, written_at FROM {SCHEMA}.fencing WHERE id = 1",
    )
    if not rows:
        return None
    row = rows[0]
    return FencingRecord(int(row["token"]), str(row["holder"]), int(row["server_id"]), row["written_at"])


def write_fencing_token(conn: DbConnection, token: int, holder: str) -> None:
    """Store ``token`` as the current epoch, refusing to go backwards. One transaction."""
    if token < 0:
        raise ValueError(f"fencing token must be >= 0, got {token}")
    query(conn, "START TRANSACTION")
    try:
        rows = query(conn, f"SELECT token FROM {SCHEMA}.fencing WHERE id = 1 FOR UPDATE")
        if rows and int(rows[0]["token"]) > token:
            raise StaleFencingTokenError(int(rows[0]["token"]), token)
        query(
            conn,
            f"INSERT INTO {SCHEMA}.fencing (id, token, holder, server_id, written_at) "
            "VALUES (1, %s, %s, @@server_id, NOW(6)) ON DUPLICATE KEY UPDATE token = VALUES(token), "
            "holder = VALUES(holder), server_id = VALUES(server_id), written_at = VALUES(written_at)",
            (token, holder),
        )
        query(
            conn,
            f"INSERT IGNORE INTO {SCHEMA}.fencing_history (token, holder, server_id, written_at) "
            "VALUES (%s, %s, @@server_id, NOW(6))",
            (token, holder),
        )
        query(conn, "COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):  # the original error matters more
            query(conn, "ROLLBACK")
        raise

"""Table tests of the cause of a failed start read from mysqld's error log (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbfence.mysql.error_log import TAIL_BYTES, describe_start_failure, error_log_path, start_failure

T = "2026-12-07 21:15:30 0 "  # the lines' time and thread
START = T + "[Note] Starting MariaDB 10.11.19-MariaDB-0+deb12u1-log source revision 58 as process 1"
RECOVERY = T + "[Note] InnoDB: Starting crash recovery from checkpoint LSN=19530628"
SEED_443 = [  # db1's error log, soak seed 443 (MariaDB 10.11's recovery refusing its redo log)
    START, RECOVERY,
    T + "[Note] InnoDB: End of log at LSN=27207427",
    T + "[ERROR] InnoDB: Missing FILE_CREATE, FILE_DELETE or FILE_MODIFY before "
    "FILE_CHECKPOINT for tablespace 19",
    T + "[ERROR] InnoDB: Plugin initialization aborted with error Data structure corruption",
    T + "[Note] InnoDB: Starting shutdown...",
    T + "[ERROR] Plugin 'InnoDB' registration as a STORAGE ENGINE failed.",
    T + "[ERROR] Unknown/unsupported storage engine: InnoDB",
    T + "[ERROR] Aborting",
]
PORT_TAKEN = [
    START,
    T + "[ERROR] Can't start server: Bind on TCP/IP port. Got error: 98: Address already in use",
    T + "[ERROR] Do you already have another server running on port: 3306 ?",
    T + "[ERROR] Aborting",
]
MYSQL_8 = [
    "2026-12-07T21:15Z 0 [System] [MY-010116] [Server] /usr/sbin/mysqld (mysqld 8.0) starting as process 9",
    "2026-12-07T21:15Z 1 [ERROR] [MY-012592] [InnoDB] Operating system error number 2 in a file operation.",
    "2026-12-07T21:15:30.3Z 0 [ERROR] [MY-010119] [Server] Aborting",
]


@pytest.mark.parametrize(("lines", "expected"), [
    (SEED_443, "crash recovery failed: InnoDB: Missing FILE_CREATE, FILE_DELETE or FILE_MODIFY before "
               "FILE_CHECKPOINT for tablespace 19; InnoDB: Plugin initialization aborted with error Data "
               "structure corruption (no start mends this: the datadir needs a rebuild from a healthy "
               "member)"),
    # Only the last start counts: an older run's errors are not this start's cause.
    ([*SEED_443, START, T + "[Note] mariadbd: ready for connections."], None),
    (PORT_TAKEN, "mysqld's start failed: Can't start server: Bind on TCP/IP port. Got error: 98: Address "
                 "already in use; Do you already have another server running on port: 3306 ?"),
    # A damaged redo log header: no crash recovery starts, InnoDB refuses (measured, 10.11).
    ([START, T + "[ERROR] InnoDB: Invalid log header checksum",
      T + "[ERROR] InnoDB: Plugin initialization aborted with error Data structure corruption",
      T + "[ERROR] Aborting"],
     "InnoDB finds its files corrupt: InnoDB: Invalid log header checksum; InnoDB: Plugin initialization "
     "aborted with error Data structure corruption (no start mends this: the datadir needs a rebuild "
     "from a healthy member)"),
    (MYSQL_8, "mysqld's start failed: Operating system error number 2 in a file operation."),
    ([START, T + "[ERROR] Aborting"], "mysqld's start failed: Aborting"),
    (SEED_443[1:], None),  # no start line in the tail read: nothing known of the last start
    ([], None),
], ids=["seed-443 recovery", "started since", "port taken", "corrupt header", "mysql 8", "only aborting",
        "no start", "empty"])
def test_the_cause_of_the_last_start(lines: list[str], expected: str | None) -> None:
    assert describe_start_failure(lines) == expected


def test_only_the_logs_tail_is_read_and_a_missing_log_is_no_cause(tmp_path: Path) -> None:
    log = tmp_path / "error.log"
    assert start_failure(log) is None and start_failure(None) is None
    log.write_text("x" * (2 * TAIL_BYTES) + "\n" + "\n".join(SEED_443) + "\n")
    cause = start_failure(log)
    assert cause is not None and cause.startswith("crash recovery failed: InnoDB: Missing FILE_CREATE")


@pytest.mark.parametrize(("log_error", "datadir", "expected"), [
    ("/var/log/mysql/error.log", "/var/lib/mysql/", Path("/var/log/mysql/error.log")),
    ("./db1.err", "/var/lib/mysql/", Path("/var/lib/mysql/db1.err")),
    ("", "/var/lib/mysql/", None),  # stderr: the journal
    ("stderr", "/var/lib/mysql/", None),
])
def test_where_the_error_log_is(log_error: str, datadir: str, expected: Path | None) -> None:
    assert error_log_path(log_error, datadir) == expected

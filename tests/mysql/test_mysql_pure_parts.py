"""Parts of the adapter that need no server: credentials, flavour SQL, grant parsing, verdict rules."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pymysql
import pytest

from dbfence.mysql.accounts import unsafe_global_privileges
from dbfence.mysql.connection import Endpoint, Timeouts, classify_error, connect
from dbfence.mysql.credentials import Credentials, load_credentials, load_credentials_file
from dbfence.mysql.errors import CredentialsError, MysqlUnavailableError, UnsupportedServerError
from dbfence.mysql.flavour import Flavour, MariaDBSql, MySQL8Sql, parse_server_version, sql_for
from dbfence.mysql.probes import probe_process, replication_verdict
from dbfence.mysql.verdict import Reason, Verdict

SECRET = "s3cr3t-never-logged"


def write_cred_file(path: Path, mode: int, body: str | None = None) -> Path:
    path.write_text(body if body is not None else f"[client]\nuser = agent\npassword = {SECRET}\n")
    path.chmod(mode)
    return path


def test_credentials_file_0600_is_read(tmp_path: Path) -> None:
    creds = load_credentials_file(write_cred_file(tmp_path / "my.cnf", 0o600))
    assert creds == Credentials("agent", SECRET)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_credentials_file_readable_by_others_is_refused_naming_the_mode(tmp_path: Path, mode: int) -> None:
    path = write_cred_file(tmp_path / "my.cnf", mode)
    with pytest.raises(CredentialsError, match=f"has mode {mode:04o}") as refused:
        load_credentials_file(path)
    assert SECRET not in str(refused.value)


def test_credentials_file_errors_never_quote_the_password(tmp_path: Path) -> None:
    broken = write_cred_file(tmp_path / "bad.cnf", 0o600, f"user = x\npassword = {SECRET}\n")
    with pytest.raises(CredentialsError) as refused:
        load_credentials_file(broken)
    assert SECRET not in str(refused.value) and refused.value.__cause__ is None
    with pytest.raises(CredentialsError, match="no user"):
        load_credentials_file(write_cred_file(tmp_path / "nouser.cnf", 0o600, "[client]\npassword=x\n"))
    with pytest.raises(CredentialsError, match="cannot read"):
        load_credentials_file(tmp_path / "missing.cnf")


def test_credentials_from_environment(tmp_path: Path) -> None:
    env = {"DBFENCE_MYSQL_USER": "agent", "DBFENCE_MYSQL_PASSWORD": SECRET}
    assert load_credentials(environ=env) == Credentials("agent", SECRET)
    with pytest.raises(CredentialsError, match="DBFENCE_MYSQL_PASSWORD"):
        load_credentials(environ={"DBFENCE_MYSQL_USER": "agent"})
    # a configured file wins over the environment
    assert load_credentials(write_cred_file(tmp_path / "c.cnf", 0o400), environ=env).user == "agent"


def test_credentials_never_show_the_password(caplog: pytest.LogCaptureFixture) -> None:
    creds = Credentials("agent", SECRET)
    assert SECRET not in repr(creds) and SECRET not in str(creds) and SECRET not in f"{creds}"
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("using %s / %r", creds, creds)
    assert SECRET not in caplog.text


def test_connect_failure_names_the_reason_without_the_password() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(MysqlUnavailableError) as failed:
        connect(Endpoint("127.0.0.1", port), Credentials("agent", SECRET), Timeouts(0.5, 0.5, 0.5))
    assert failed.value.reason is Reason.CONNECT_REFUSED
    assert SECRET not in str(failed.value) and failed.value.__cause__ is None


def test_classify_error() -> None:
    assert (
        classify_error(pymysql.err.OperationalError(1040, "Too many connections"))
        is Reason.TOO_MANY_CONNECTIONS
    )
    assert classify_error(pymysql.err.OperationalError(1045, "Access denied")) is Reason.AUTH_FAILED
    lost = pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query (timed out)")
    assert classify_error(lost) is Reason.QUERY_TIMEOUT
    assert classify_error(TimeoutError()) is Reason.QUERY_TIMEOUT


@pytest.mark.parametrize(
    ("text", "flavour", "version"),
    [
        ("10.11.19-MariaDB-0+deb12u1", Flavour.MARIADB, (10, 11, 19)),
        ("11.4.2-MariaDB-log", Flavour.MARIADB, (11, 4, 2)),
        ("8.0.36", Flavour.MYSQL, (8, 0, 36)),
        ("8.4.0-commercial", Flavour.MYSQL, (8, 4, 0)),
    ],
)
def test_server_version_detection(text: str, flavour: Flavour, version: tuple[int, int, int]) -> None:
    parsed = parse_server_version(text)
    assert (parsed.flavour, parsed.version) == (flavour, version)
    assert isinstance(sql_for(parsed), MariaDBSql if flavour is Flavour.MARIADB else MySQL8Sql)


@pytest.mark.parametrize("text", ["10.4.30-MariaDB", "5.7.44", "8.0.11", "banana"])
def test_unsupported_servers_are_refused(text: str) -> None:
    with pytest.raises(UnsupportedServerError):
        parse_server_version(text)


def test_flavour_sql_mariadb_is_lossless_and_gtid_based() -> None:
    maria = MariaDBSql()
    statements = maria.semi_sync_primary(True, 86_400_000)
    assert "SET GLOBAL rpl_semi_sync_master_wait_point = AFTER_SYNC" in statements
    assert "SET GLOBAL rpl_semi_sync_master_wait_no_slave = ON" in statements
    sql, params = maria.change_primary(host="h", port=1, user="u", password="p", heartbeat_s=1, retry_s=1)
    assert "MASTER_USE_GTID = slave_pos" in sql and "p" in params and "'p'" not in sql
    assert MySQL8Sql.tested is False and MariaDBSql.tested is True
    assert MySQL8Sql().set_read_only(True) == ["SET GLOBAL super_read_only = ON"]


@pytest.mark.parametrize(
    ("lines", "unsafe", "roles"),
    [
        (["GRANT SELECT, INSERT ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*AB'"], set(), []),
        (["GRANT ALL PRIVILEGES ON *.* TO `x`@`%` WITH GRANT OPTION"], {"ALL PRIVILEGES"}, []),
        (["GRANT SELECT, SUPER ON *.* TO `x`@`%`"], {"SUPER"}, []),
        (["GRANT READ_ONLY ADMIN ON *.* TO `x`@`%`"], {"READ ONLY ADMIN"}, []),
        (["GRANT ALL PRIVILEGES ON `appdb`.* TO `x`@`%`"], set(), []),  # schema-level: harmless
        (["GRANT USAGE ON *.* TO `x`@`%`", "GRANT `r1`, `r2` TO `x`@`%`"], set(), ["r1", "r2"]),
    ],
)
def test_grant_parsing(lines: list[str], unsafe: set[str], roles: list[str]) -> None:
    found, granted_roles = unsafe_global_privileges(lines, MariaDBSql.write_through_read_only_privileges)
    assert found == unsafe and granted_roles == roles


def _status(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "Slave_IO_Running": "Yes",
        "Slave_SQL_Running": "Yes",
        "Last_IO_Errno": 0,
        "Last_IO_Error": "",
        "Last_SQL_Errno": 0,
        "Last_SQL_Error": "",
        "Seconds_Behind_Master": 0,
        "Master_Host": "h",
        "Master_Port": 3306,
        "Master_Server_Id": 1,
        "Gtid_IO_Pos": "0-1-5",
        "Using_Gtid": "Slave_Pos",
    }
    row.update(overrides)
    return row


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (_status(), Reason.OK),
        (None, Reason.NOT_A_REPLICA),
        (
            _status(Slave_SQL_Running="No", Last_SQL_Errno=1062, Last_SQL_Error="Duplicate"),
            Reason.REPLICATION_ERROR,
        ),
        (_status(Slave_SQL_Running="No"), Reason.SQL_THREAD_NOT_RUNNING),
        (_status(Slave_IO_Running="Connecting", Last_IO_Errno=2003), Reason.IO_THREAD_NOT_RUNNING),
        (_status(Seconds_Behind_Master=None), Reason.LAG_UNKNOWN),
        (_status(Seconds_Behind_Master=31), Reason.LAG_TOO_HIGH),
    ],
)
def test_replication_verdict(row: dict[str, object] | None, reason: Reason) -> None:
    assert replication_verdict(row, MariaDBSql(), 30.0, 0.001).reason is reason


def test_heartbeat_age_counts_as_lag_when_seconds_behind_master_reads_zero() -> None:
    stale = replication_verdict(_status(), MariaDBSql(), 30.0, 0.001, heartbeat_age_s=45.0)
    assert stale.reason is Reason.LAG_TOO_HIGH and "heartbeat 45.0 s old" in stale.detail
    assert replication_verdict(_status(), MariaDBSql(), 30.0, 0.001, heartbeat_age_s=0.3).ok


def test_process_probe_reasons(tmp_path: Path) -> None:
    pid_file = tmp_path / "mysqld.pid"
    assert probe_process(pid_file).reason is Reason.PID_FILE_MISSING
    pid_file.write_text("garbage")
    assert probe_process(pid_file).reason is Reason.PID_FILE_INVALID
    pid_file.write_text(str(os.getpid()))  # alive, but python, not mysqld
    assert probe_process(pid_file).reason is Reason.PROCESS_NOT_MYSQLD
    pid_file.write_text("4194304")  # above the kernel's pid_max: cannot exist
    assert probe_process(pid_file).reason is Reason.PROCESS_GONE


def _named_child(name: bytes) -> subprocess.Popen[str]:
    """A sleeping child process whose kernel name (what /proc/PID/stat shows) is ``name``."""
    code = (f"import ctypes, time; ctypes.CDLL(None).prctl(15, {name!r}, 0, 0, 0); "
            "print('ready', flush=True); time.sleep(120)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child


def _reason_becomes(pid_file: Path, reason: Reason) -> Verdict:
    deadline = time.monotonic() + 10
    while (verdict := probe_process(pid_file)).reason is not reason:
        assert time.monotonic() < deadline, f"still {verdict} after 10 s, waiting for {reason}"
        time.sleep(0.01)
    return verdict


def test_process_probe_reads_a_mysqld_state_from_proc(tmp_path: Path) -> None:
    """The probe reads the name and state from /proc/PID/stat itself (one read a round): a running
    mysqld, a stopped one, a zombie, a reaped one; names with spaces and parentheses."""
    pid_file = tmp_path / "mysqld.pid"
    odd = _named_child(b"my) (sqld x")
    try:
        pid_file.write_text(str(odd.pid))
        verdict = probe_process(pid_file)
        assert verdict.reason is Reason.PROCESS_NOT_MYSQLD and "'my) (sqld x'" in verdict.detail
    finally:
        odd.kill()
        odd.wait()
    child = _named_child(b"mysqld")
    try:
        pid_file.write_text(str(child.pid))
        # Just after its "ready" line the child may still be running on its way into sleep().
        deadline = time.monotonic() + 10
        while (verdict := probe_process(pid_file)).detail != f"pid {child.pid} mysqld sleeping":
            assert verdict.ok and verdict.detail == f"pid {child.pid} mysqld running", verdict
            assert time.monotonic() < deadline, f"still {verdict} after 10 s"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGSTOP)
        stopped = _reason_becomes(pid_file, Reason.PROCESS_STOPPED)
        assert "(mysqld) is stopped (status stopped)" in stopped.detail
        os.kill(child.pid, signal.SIGKILL)  # not reaped yet: a zombie
        assert "(status zombie)" in _reason_becomes(pid_file, Reason.PROCESS_ZOMBIE).detail
    finally:
        child.kill()
        child.wait()
    assert probe_process(pid_file).reason is Reason.PROCESS_GONE

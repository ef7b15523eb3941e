"""Single probes of the local mysqld, plain functions usable on their own: is the process a live
mysqld, is there free space on the data directory, does a fresh connection log in, and what a
replica's status says about replication.

Kept apart from ``probes.py``, which schedules them (with the probes of the reserved connection
and the write probe) in lanes each round.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import psutil

from dbfence.mysql.connection import Endpoint, Timeouts, close_quietly, connect
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.errors import MysqlUnavailableError
from dbfence.mysql.flavour import FlavourSql, ReplicaStatus
from dbfence.mysql.verdict import ProbeKind, Reason, Verdict

MYSQLD_NAMES = frozenset({"mariadbd", "mysqld"})
# The state letter of /proc/PID/stat, named as psutil names it (the probe's details keep its words).
_STATES = {"R": psutil.STATUS_RUNNING, "S": psutil.STATUS_SLEEPING, "D": psutil.STATUS_DISK_SLEEP,
           "T": psutil.STATUS_STOPPED, "t": psutil.STATUS_TRACING_STOP, "Z": psutil.STATUS_ZOMBIE,
           "X": psutil.STATUS_DEAD, "x": psutil.STATUS_DEAD, "K": "wake-kill",
           "W": psutil.STATUS_WAKING, "P": psutil.STATUS_PARKED, "I": psutil.STATUS_IDLE}


def _name_and_status(pid: int) -> tuple[str, str]:
    """The process's name and state from one read of /proc/PID/stat (the probe runs every round:
    psutil read the same file twice and /proc/PID/status once, issue 18). Raises OSError."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        stat = handle.read()
    # "pid (name) S ...": the name may itself hold parentheses and spaces, the state follows the last ")".
    opened, closed = stat.index(b"("), stat.rindex(b")")
    name = stat[opened + 1 : closed].decode("utf-8", "replace")
    letter = chr(stat[closed + 2]) if len(stat) > closed + 2 else "?"
    return name, _STATES.get(letter, letter)


def probe_process(pid_file: Path) -> Verdict:
    """Is the process named in ``pid_file`` a live, running mysqld?"""
    started = time.monotonic()

    def fail(reason: Reason, detail: str) -> Verdict:
        return Verdict.failed(ProbeKind.PROCESS, reason, detail, time.monotonic() - started)

    try:
        text = pid_file.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return fail(Reason.PID_FILE_MISSING, f"{pid_file} does not exist")
    except (OSError, UnicodeDecodeError) as exc:
        return fail(Reason.PID_FILE_INVALID, f"cannot read {pid_file}: {exc}")
    if not text.isdigit():
        return fail(Reason.PID_FILE_INVALID, f"{pid_file} holds {text[:20]!r}, not a pid")
    pid = int(text)
    try:
        name, status = _name_and_status(pid)
    except (FileNotFoundError, ProcessLookupError):
        return fail(Reason.PROCESS_GONE, f"pid {pid} from {pid_file} is not running")
    except (OSError, ValueError) as exc:
        return fail(Reason.PROCESS_GONE, f"pid {pid}: {exc}")
    if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
        return fail(Reason.PROCESS_ZOMBIE, f"pid {pid} ({name}) has exited (status {status})")
    if name not in MYSQLD_NAMES:
        return fail(Reason.PROCESS_NOT_MYSQLD, f"pid {pid} is {name!r}, not mysqld")
    if status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
        return fail(Reason.PROCESS_STOPPED, f"pid {pid} ({name}) is stopped (status {status})")
    return Verdict.passed(ProbeKind.PROCESS, f"pid {pid} {name} {status}", time.monotonic() - started)


def probe_disk(datadir: Path, min_free_bytes: int, min_free_ratio: float) -> Verdict:
    started = time.monotonic()
    try:
        usage = shutil.disk_usage(datadir)
    except OSError as exc:
        return Verdict.failed(
            ProbeKind.DISK, Reason.DISK_UNREADABLE, f"{datadir}: {exc}", time.monotonic() - started
        )
    ratio = usage.free / usage.total if usage.total else 0.0
    detail = (
        f"{usage.free / 1024**2:.0f} MiB free of {usage.total / 1024**2:.0f} MiB ({ratio:.1%}) on {datadir}"
    )
    elapsed = time.monotonic() - started
    if usage.free < min_free_bytes or ratio < min_free_ratio:
        limits = f"want >= {min_free_bytes / 1024**2:.0f} MiB and >= {min_free_ratio:.1%}"
        return Verdict.failed(ProbeKind.DISK, Reason.DISK_LOW, f"{detail}; {limits}", elapsed)
    return Verdict.passed(ProbeKind.DISK, detail, elapsed)


def probe_connect(endpoint: Endpoint, credentials: Credentials, timeout_s: float) -> Verdict:
    """A fresh connection completes the handshake and logs in, within ``timeout_s``."""
    started = time.monotonic()
    try:
        conn = connect(endpoint, credentials, Timeouts(timeout_s, timeout_s, timeout_s))
    except MysqlUnavailableError as exc:
        return Verdict.failed(ProbeKind.CONNECT, exc.reason, exc.detail, time.monotonic() - started)
    close_quietly(conn)
    return Verdict.passed(ProbeKind.CONNECT, f"connected to {endpoint}", time.monotonic() - started)


def replication_verdict(
    row: dict[str, object] | None,
    flavour: FlavourSql,
    max_lag_s: float,
    elapsed_s: float,
    heartbeat_age_s: float | None = None,
) -> Verdict:
    """Judge one SHOW SLAVE STATUS row (None = no replication configured)."""
    status = None if row is None else flavour.parse_replica_status(row)
    return judge_replica_status(status, max_lag_s, elapsed_s, heartbeat_age_s)


def judge_replica_status(
    status: ReplicaStatus | None,
    max_lag_s: float,
    elapsed_s: float,
    heartbeat_age_s: float | None = None,
) -> Verdict:
    """The REPLICATION verdict on a replica's status (None = no replication configured).

    ``heartbeat_age_s`` is how old the primary's heartbeat row is on this replica (None when
    unknown). Lag is the larger of it and Seconds_Behind_Master, which reads 0 while the IO
    thread itself is behind.
    """
    kind = ProbeKind.REPLICATION
    if status is None:
        return Verdict.failed(kind, Reason.NOT_A_REPLICA, "no replication configured", elapsed_s)
    source = f"from {status.primary_host}:{status.primary_port}"
    if status.last_sql_errno:
        return Verdict.failed(
            kind,
            Reason.REPLICATION_ERROR,
            f"SQL thread error {status.last_sql_errno} {source}: {status.last_sql_error}",
            elapsed_s,
        )
    if status.sql_running != "Yes":
        return Verdict.failed(
            kind, Reason.SQL_THREAD_NOT_RUNNING, f"SQL thread {status.sql_running} {source}", elapsed_s
        )
    if status.io_running != "Yes":
        error = f": error {status.last_io_errno} {status.last_io_error}" if status.last_io_errno else ""
        return Verdict.failed(
            kind, Reason.IO_THREAD_NOT_RUNNING, f"IO thread {status.io_running} {source}{error}", elapsed_s
        )
    if status.seconds_behind is None:
        return Verdict.failed(kind, Reason.LAG_UNKNOWN, f"lag unknown {source}", elapsed_s)
    heartbeat = "" if heartbeat_age_s is None else f", heartbeat {heartbeat_age_s:.1f} s old"
    lag = max(float(status.seconds_behind), heartbeat_age_s or 0.0)
    if lag > max_lag_s:
        return Verdict.failed(
            kind,
            Reason.LAG_TOO_HIGH,
            f"{status.seconds_behind} s behind {source}{heartbeat} (max {max_lag_s:g} s)",
            elapsed_s,
        )
    return Verdict.passed(
        kind,
        f"{status.seconds_behind} s behind {source}{heartbeat}, at {status.received_gtid_pos}",
        elapsed_s,
    )

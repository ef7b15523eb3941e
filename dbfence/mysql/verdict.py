"""Probe verdicts: every probe answers with a kind, a pass/fail, a reason enum and a human text.

Pure module (no I/O) so the decision core and the status/metrics code can share the types.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ProbeKind(enum.Enum):
    PROCESS = "process"  # mysqld process alive, by pid file (psutil)
    CONNECT = "connect"  # a fresh TCP/socket connection completes the handshake
    SELECT = "select"  # SELECT 1 on the agent's reserved connection
    WRITE = "write"  # heartbeat row update commits in time (primary only)
    DISK = "disk"  # free space on the data directory
    CONNECTIONS = "connections"  # connection slots left for clients
    REPLICATION = "replication"  # replica threads, errors, lag (replicas only)
    READ_ONLY = "read_only"  # read_only matches the role


class Reason(enum.Enum):
    OK = "ok"
    # process
    PID_FILE_MISSING = "pid_file_missing"
    PID_FILE_INVALID = "pid_file_invalid"
    PROCESS_GONE = "process_gone"
    PROCESS_STOPPED = "process_stopped"  # SIGSTOP, or traced
    PROCESS_ZOMBIE = "process_zombie"
    PROCESS_NOT_MYSQLD = "process_not_mysqld"  # pid reused by something else
    # connect / query
    CONNECT_REFUSED = "connect_refused"
    CONNECT_TIMEOUT = "connect_timeout"
    CONNECT_FAILED = "connect_failed"
    AUTH_FAILED = "auth_failed"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    QUERY_TIMEOUT = "query_timeout"
    QUERY_FAILED = "query_failed"
    STILL_RUNNING = "still_running"  # the previous run of this probe has not returned yet
    # write
    WRITE_TIMEOUT = "write_timeout"
    WRITE_FAILED = "write_failed"
    # disk
    DISK_LOW = "disk_low"
    DISK_UNREADABLE = "disk_unreadable"
    # replication
    NOT_A_REPLICA = "not_a_replica"
    IO_THREAD_NOT_RUNNING = "io_thread_not_running"
    SQL_THREAD_NOT_RUNNING = "sql_thread_not_running"
    REPLICATION_ERROR = "replication_error"
    LAG_TOO_HIGH = "lag_too_high"
    LAG_UNKNOWN = "lag_unknown"
    # read_only
    READ_ONLY_ON = "read_only_on"  # primary that cannot take writes
    READ_ONLY_OFF = "read_only_off"  # replica that is writable


# Failures that show mysqld alive and answering, only out of room for more clients (it accepted
# the TCP connection and sent a protocol error, or reported every slot in use). They are reported
# but never trip a probe: failing over for them moves the flood to the next primary and drops
# every transaction in flight (docs/detection.md, "Too many connections is not a failure").
SATURATION_REASONS = frozenset({Reason.TOO_MANY_CONNECTIONS})


@dataclass(frozen=True)
class Verdict:
    """One probe result. ``elapsed_s`` is how long the probe took (or has been running)."""

    kind: ProbeKind
    ok: bool
    reason: Reason
    detail: str
    elapsed_s: float

    @classmethod
    def passed(cls, kind: ProbeKind, detail: str, elapsed_s: float) -> Verdict:
        return cls(kind, True, Reason.OK, detail, elapsed_s)

    @classmethod
    def failed(cls, kind: ProbeKind, reason: Reason, detail: str, elapsed_s: float) -> Verdict:
        if reason is Reason.OK:
            raise ValueError("a failed verdict needs a failure reason")
        return cls(kind, False, reason, detail, elapsed_s)

    @property
    def saturated(self) -> bool:
        """A failure that proves mysqld alive, only refusing clients: it never trips a probe."""
        return not self.ok and self.reason in SATURATION_REASONS

    def __str__(self) -> str:
        state = "ok" if self.ok else f"SATURATED {self.reason.value}" if self.saturated \
            else f"FAIL {self.reason.value}"
        return f"{self.kind.value}: {state} ({self.detail}, {self.elapsed_s * 1000:.0f} ms)"

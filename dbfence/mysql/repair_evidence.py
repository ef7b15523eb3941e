"""The evidence a primary records when it fences: was every commit it returned acknowledged?

Truncating a former primary's errant transactions is safe only if none of them was ever
acknowledged to a client. That holds when the node ran lossless semi-sync while primary: the
AFTER_SYNC wait point (a commit is visible and returned only after a replica has it) and no
fallback to asynchronous replication (MariaDB's ``Rpl_semi_sync_master_no_times`` counts
fallbacks since mysqld started, ``Rpl_semi_sync_master_no_tx`` commits that were not
acknowledged). The agent reads this at fencing time and keeps it in its state directory; the
repair refuses when it is missing, unreadable or says otherwise.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.connection import query, query_one

EVIDENCE_FILE = "fencing-evidence.json"


@dataclass(frozen=True)
class FencingEvidence:
    """Semi-sync facts of the local mysqld, read while (or right after) it was primary.

    The counters are since mysqld started (``started_at``, from ``Uptime``, for the record), so
    the evidence only speaks for that run of mysqld: the agent reads it from the process that
    was primary (same pid as at fencing).
    """

    recorded_at: float
    started_at: float
    master_enabled: bool
    master_status: bool
    wait_point: str
    timeout_ms: int
    no_times: int
    no_tx: int
    yes_tx: int
    gtid_binlog_pos: str
    wait_sessions: int = 0
    server_id: int = 0
    log_bin_basename: str = ""
    datadir: str = ""
    killed_by_fence: bool = False  # the fence SIGKILLed this mysqld to keep its waiting commits in doubt
    # Of ``no_tx``, the commits whose ack wait ended because our own fence killed their session (the
    # gate already blocked): their clients got an error, never an OK. Counted around the fence's
    # KILLs (RepairKeeper.fence), never more than this read of the counters includes.
    ended_by_fence: int = 0

    def problem(self) -> str | None:
        """None when this proves lossless operation; else what it lacks, in one line."""
        if not self.master_enabled:
            return "semi-sync was off on this node as primary (rpl_semi_sync_master_enabled = OFF)"
        if self.wait_point.upper() != "AFTER_SYNC":
            return f"semi-sync wait point {self.wait_point}, not AFTER_SYNC"
        if self.no_times < 0 or self.no_tx < 0 or not 0 <= self.ended_by_fence <= self.no_tx:
            return "the semi-sync counters could not be read"
        if self.no_times:
            return (f"semi-sync fell back to asynchronous {self.no_times} time(s) "
                    "(Rpl_semi_sync_master_no_times)")
        unacknowledged = self.no_tx - self.ended_by_fence
        if unacknowledged:
            fence = f", besides {self.ended_by_fence} whose wait the fence ended" * bool(self.ended_by_fence)
            return (f"{unacknowledged} commit(s) were not acknowledged by a replica "
                    f"(Rpl_semi_sync_master_no_tx{fence})")
        if not self.master_status:
            return "semi-sync was not active at fencing (Rpl_semi_sync_master_status = OFF)"
        return None


def read_evidence(mysql: MysqlActions) -> FencingEvidence:
    """Read the evidence from the local mysqld (raises a MysqlAdapterError when it cannot)."""
    with mysql.session(read_timeout_s=1.0) as conn:
        variables = query_one(
            conn,
            "SELECT @@global.rpl_semi_sync_master_enabled AS enabled, "
            "@@global.rpl_semi_sync_master_wait_point AS wait_point, "
            "@@global.rpl_semi_sync_master_timeout AS timeout_ms, "
            "@@global.gtid_binlog_pos AS binlog_pos, @@global.server_id AS server_id, "
            "@@global.log_bin_basename AS log_bin_basename, @@global.datadir AS datadir",
        )
        status = {str(row["Variable_name"]).lower(): str(row["Value"]) for row in query(
            conn, "SHOW GLOBAL STATUS WHERE Variable_name IN ('Rpl_semi_sync_master_status', "
                  "'Rpl_semi_sync_master_no_times', 'Rpl_semi_sync_master_no_tx', "
                  "'Rpl_semi_sync_master_yes_tx', 'Rpl_semi_sync_master_wait_sessions', 'Uptime')")}
    now = time.time()
    return FencingEvidence(
        recorded_at=now,
        started_at=now - float(status.get("uptime", "0")),
        master_enabled=bool(int(variables["enabled"])),
        master_status=status.get("rpl_semi_sync_master_status", "OFF").upper() == "ON",
        wait_point=str(variables["wait_point"]),
        timeout_ms=int(variables["timeout_ms"]),
        no_times=int(status.get("rpl_semi_sync_master_no_times", "-1")),
        no_tx=int(status.get("rpl_semi_sync_master_no_tx", "-1")),
        yes_tx=int(status.get("rpl_semi_sync_master_yes_tx", "0")),
        gtid_binlog_pos=str(variables["binlog_pos"]),
        wait_sessions=int(status.get("rpl_semi_sync_master_wait_sessions", "0")),
        server_id=int(variables["server_id"]),
        log_bin_basename=str(variables["log_bin_basename"] or ""),
        datadir=str(variables["datadir"] or ""),
    )


def read_unacknowledged_count(mysql: MysqlActions) -> int:
    """``Rpl_semi_sync_master_no_tx`` alone: read around the fence's KILLs, which end ack waits."""
    with mysql.session(read_timeout_s=1.0) as conn:
        row = query_one(conn, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_no_tx'")
    return int(str(row["Value"]))


def save_evidence(state_dir: Path, evidence: FencingEvidence) -> Path:
    """Write the evidence atomically (mode 0600); returns its path."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / EVIDENCE_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(evidence), out, indent=2)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return path


def load_evidence(state_dir: Path) -> FencingEvidence | str:
    """The saved evidence, or why there is none usable (missing, unreadable, malformed)."""
    path = state_dir / EVIDENCE_FILE
    try:
        raw: Any = json.loads(path.read_text())
        return FencingEvidence(**raw)
    except FileNotFoundError:
        return "no evidence recorded"
    except (OSError, ValueError, TypeError) as exc:
        return f"evidence file {path} unusable: {exc}"


def clear_evidence(state_dir: Path) -> None:
    """Forget the evidence once this node serves as a replica again (or primary anew)."""
    (state_dir / EVIDENCE_FILE).unlink(missing_ok=True)

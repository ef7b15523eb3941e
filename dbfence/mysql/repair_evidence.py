"""The evidence a primary records when it fences: was every commit it returned acknowledged?

Truncating a former primary's errant transactions is safe only if none of them was ever
acknowledged to a client. That holds when the node ran lossless semi-sync while primary: the
AFTER_SYNC wait point (a commit is visible and returned only after a replica has it) and no
fallback to asynchronous replication (MariaDB's ``Rpl_semi_sync_master_no_times`` counts
fallbacks since mysqld started, ``Rpl_semi_sync_master_no_tx`` commits that were not
acknowledged). The agent reads this at fencing time and keeps it in its state directory; the
repair refuses when it is missing, unreadable or says otherwise.

Both counters only grow while mysqld runs, and not only in the term being judged: turning the
semi-sync master off counts as a fallback (the repoint of a former primary does it; measured on
10.11, with or without a waiting commit), and earlier terms of the same mysqld left theirs. So a
node promoted from a replica records the counters as its term begins (:class:`CounterBaseline`,
semi-sync on, gate still closed) and the evidence judges only what the term added. Without such
a baseline they count since mysqld started (everything before the term may be errant too), less
the fallbacks the agent counted around its own switch-offs as the node demoted (gate closed:
``own_switch_offs``).
``FLUSH STATUS`` zeroes them (and is binlogged): seen as a changed ``Uptime`` -
``Uptime_since_flush_status``, it voids the evidence; :mod:`dbfence.mysql.semi_sync_term` says
when that value cannot see a flush and how the agent makes sure it can (the baseline's read,
sampling during the term, whose findings arrive here as ``term_problem``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from dbfence.durable import write_json_atomically
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.connection import query, query_one

EVIDENCE_FILE = "fencing-evidence.json"


@dataclass(frozen=True)
class FencingEvidence:
    """Semi-sync facts of the local mysqld, read while (or right after) it was primary.

    The counters are since mysqld started (``started_at``, from ``Uptime``), so the evidence only
    speaks for that run of mysqld: the agent reads it from the process that was primary (same pid
    as at fencing) and judges what the term added since its baseline (``since_baseline``).
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
    # Of ``no_times``, for a term judged since mysqld start only: the fallbacks this run counted when
    # the agent itself turned semi-sync's primary side off as the node demoted (the gate already
    # closed: no commit it released reached a client). Counted around each switch-off
    # (TermWatch.own_switch_off), in memory: after an agent restart none are known (stricter).
    own_switch_offs: int = 0
    # ``Uptime - Uptime_since_flush_status``: constant for a run of mysqld until a FLUSH STATUS
    # zeroes the counters (-1: not read).
    flushed_after_s: int = -1
    # The counters as this node's term began (CounterBaseline); the defaults mean "since mysqld
    # started, never flushed". ``baseline_problem``: a baseline that does not fit this mysqld.
    baseline_no_times: int = 0
    baseline_no_tx: int = 0
    baseline_flushed_after_s: int = 0
    baseline_from: str = "mysqld start"
    baseline_problem: str = ""
    # What the agent saw during the term that no clean term shows (semi_sync_term.TermTaint):
    # sampled counters that fell back, went down or were flushed, or a reference it could not read.
    term_problem: str = ""
    # ``gtid_binlog_state`` and ``gtid_slave_pos`` as read with the counters (None: not read, an
    # older agent's file). For a mysqld the fence killed, what it held at the kill: its crash
    # recovery only removes transactions, so this bounds what it holds until the repair (the
    # takeover without a primary proves against it, dbfence/agent/decide_takeover.py).
    gtid_binlog_state: str | None = None
    gtid_slave_pos: str | None = None

    def problem(self) -> str | None:
        """None when this proves lossless operation; else what it lacks, in one line."""
        if not self.master_enabled:
            return "semi-sync was off on this node as primary (rpl_semi_sync_master_enabled = OFF)"
        if self.wait_point.upper() != "AFTER_SYNC":
            return f"semi-sync wait point {self.wait_point}, not AFTER_SYNC"
        if self.baseline_problem:
            return self.baseline_problem
        if self.term_problem:
            return self.term_problem
        if self.no_times < 0 or self.no_tx < 0 or self.flushed_after_s < 0:
            return "the semi-sync counters could not be read"
        fell_back, not_acked = self.no_times - self.baseline_no_times, self.no_tx - self.baseline_no_tx
        if self.flushed_after_s != self.baseline_flushed_after_s or fell_back < 0 or not_acked < 0:
            return f"FLUSH STATUS reset the semi-sync counters since {self.baseline_from}"
        term = self.baseline_from != "mysqld start"
        own = 0 if term else self.own_switch_offs  # a promotion's reference holds those of its run
        if not 0 <= self.ended_by_fence <= not_acked or not 0 <= own <= fell_back:
            return "the semi-sync counters could not be read"
        fell_back -= own
        if fell_back:
            since = f", {self.baseline_no_times} before this term" * term
            besides = f", besides {own} of the agent's own switch-offs as it demoted" * bool(own)
            return (f"semi-sync fell back to asynchronous {fell_back} time(s) "
                    f"(Rpl_semi_sync_master_no_times{besides}{since})")
        unacknowledged = not_acked - self.ended_by_fence
        if unacknowledged:
            fence = f", besides {self.ended_by_fence} whose wait the fence ended" * bool(self.ended_by_fence)
            since = f", {self.baseline_no_tx} before this term" * term
            return (f"{unacknowledged} commit(s) were not acknowledged by a replica "
                    f"(Rpl_semi_sync_master_no_tx{fence}{since})")
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
            "@@global.gtid_binlog_pos AS binlog_pos, @@global.gtid_binlog_state AS binlog_state, "
            "@@global.gtid_slave_pos AS slave_pos, @@global.server_id AS server_id, "
            "@@global.log_bin_basename AS log_bin_basename, @@global.datadir AS datadir",
        )
        status = {str(row["Variable_name"]).lower(): str(row["Value"]) for row in query(
            conn, "SHOW GLOBAL STATUS WHERE Variable_name IN ('Rpl_semi_sync_master_status', "
                  "'Rpl_semi_sync_master_no_times', 'Rpl_semi_sync_master_no_tx', "
                  "'Rpl_semi_sync_master_yes_tx', 'Rpl_semi_sync_master_wait_sessions', 'Uptime', "
                  "'Uptime_since_flush_status')")}
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
        flushed_after_s=(int(status["uptime"]) - int(status["uptime_since_flush_status"])
                         if "uptime_since_flush_status" in status and "uptime" in status else -1),
        gtid_binlog_state=str(variables["binlog_state"] or ""),
        gtid_slave_pos=str(variables["slave_pos"] or ""),
    )


#: Wall-clock slack when telling runs of mysqld apart by their start (``Uptime`` is in seconds).
SAME_START_SLACK_S = 2.0


@dataclass(frozen=True)
class CounterBaseline:
    """The semi-sync counters of one run of mysqld (``pid``, ``started_at``) as a term as primary
    began: recorded after semi-sync was switched on and before the gate admits (at a promotion from
    a replica; else just before the term's first admit, ``since_start``)."""

    pid: str
    started_at: float
    flushed_after_s: int
    no_times: int
    no_tx: int
    recorded_at: float
    # The term is judged since mysqld started (no promotion from a replica): the counters and flush
    # time above are those of an unflushed start; only the run of mysqld is pinned down.
    since_start: bool = False

    @classmethod
    def of(cls, evidence: FencingEvidence, pid: str) -> CounterBaseline:
        return cls(pid, evidence.started_at, evidence.flushed_after_s, evidence.no_times, evidence.no_tx,
                   evidence.recorded_at)


def since_baseline(evidence: FencingEvidence, baseline: CounterBaseline | None, pid: str) -> FencingEvidence:
    """``evidence`` (read from the mysqld with ``pid``) judged by what its term added since
    ``baseline``; None: since mysqld started, whichever run (no term start recorded one). A
    baseline of another run of mysqld proves nothing: the node then refuses to truncate."""
    if baseline is None:
        return evidence
    if baseline.pid != pid or abs(baseline.started_at - evidence.started_at) > SAME_START_SLACK_S:
        return replace(evidence, baseline_problem=(
            f"mysqld restarted since this node became primary (pid {baseline.pid or '?'}, now "
            f"{pid or '?'}): the semi-sync counters of its term are gone"))
    return replace(evidence, baseline_no_times=baseline.no_times, baseline_no_tx=baseline.no_tx,
                   baseline_flushed_after_s=baseline.flushed_after_s,
                   baseline_from="mysqld start" if baseline.since_start
                   else f"the promotion at {utc(baseline.recorded_at)}")


def utc(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


def read_unacknowledged_count(mysql: MysqlActions) -> int:
    """``Rpl_semi_sync_master_no_tx`` alone: read around the fence's KILLs, which end ack waits."""
    with mysql.session(read_timeout_s=1.0) as conn:
        row = query_one(conn, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_no_tx'")
    return int(str(row["Value"]))


def save_evidence(state_dir: Path, evidence: FencingEvidence) -> Path:
    """Write the evidence atomically (mode 0600); returns its path."""
    state_dir.mkdir(parents=True, exist_ok=True)
    return write_json_atomically(state_dir / EVIDENCE_FILE, asdict(evidence))


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

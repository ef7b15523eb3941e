"""The fencing half of the agent's ``[rejoin]`` repair: the evidence read as the node fences, and
the fence itself when the evidence says to crash mysqld instead of killing its sessions.

Why a module of its own: :class:`~dbfence.agent.repair_keeper.RepairKeeper` runs the repairs and
answers the loop; reading the semi-sync counters at fencing (in a thread: a hung mysqld may answer
minutes later) and attributing the ack waits our own fence ends are a separate job that shares only
the keeper's bookkeeping, so it is mixed in from here (:class:`FencingRecorder`), like
:mod:`repair_rebuild`, and the keeper stays one object for the loop and the executor.

Layout: :func:`state_at_kill` (what a mysqld the fence killed held), then the mixin: ``fence``,
``fence_unreached`` and ``fence_by_crash`` run on the loop's thread (through the executor's
fence), ``_read_evidence`` on a thread of its own that ``RepairKeeper.on_fencing`` starts, or
``_resume_term`` when an agent starts with a fence (or term) its predecessor left unread in the
term record (:mod:`dbfence.agent.term_record`; soak seed 423), which the fence keeps up to date.

Invariants: evidence counts only for the run of mysqld that was primary (the same pid and process
start as at fencing, ``_run_changed``); what the fence ended is counted before the read, never
more than the counters include; a fence by crash only with ``truncate``, after the node left
PRIMARY (seen by this agent, or by the one before it, from the record), and on evidence that
proves lossless operation. Every field is written under the keeper's lock.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TypeVar

from dbfence.agent.gtid import BinlogState, GtidParseError, GtidPosition
from dbfence.agent.term_record import (
    SAME_PROCESS_SLACK_S,
    TermRecord,
    clear_record,
    load_record,
    process_started_at,
    save_record,
)
from dbfence.agent.term_watch import TermWatch
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.errors import MysqlAdapterError, MysqlQueryError
from dbfence.mysql.repair import MysqldControl, kill_mysqld, mysqld_running
from dbfence.mysql.repair_errors import RepairError
from dbfence.mysql.repair_evidence import FencingEvidence, read_evidence, save_evidence
from dbfence.mysql.semi_sync_term import load_taint

log = logging.getLogger("dbfence.agent")

#: How long after fencing the evidence may still be read from the same run of mysqld (a hung one
#: that resumes); a run that started after the fence says nothing about the primary's commits.
EVIDENCE_RETRY_FOR = 600.0

_T = TypeVar("_T")


def state_at_kill(evidence: FencingEvidence) -> BinlogState | None:
    """What a mysqld the fence killed held at the kill: its binlog state with what it applied as a
    replica (None: not read, e.g. an older agent's evidence, or unparsable)."""
    if evidence.gtid_binlog_state is None or evidence.gtid_slave_pos is None:
        return None
    try:
        return BinlogState.merged(GtidPosition.parse_gtids(evidence.gtid_binlog_state),
                                  GtidPosition.parse_gtids(evidence.gtid_slave_pos))
    except GtidParseError:
        return None


class FencingRecorder:
    """The evidence at fencing and the fence by crash, mixed into RepairKeeper, which sets every
    attribute declared here."""

    mode: str
    node: str
    state_dir: Path
    mysql: MysqlActions
    control: MysqldControl
    wall: Callable[[], float]
    term: TermWatch
    _lock: threading.Lock
    _fenced_at: float | None
    _evidence: FencingEvidence | str
    _killed: bool
    _ended_by_fence: int
    _unreached: bool
    _fenced_pid: str
    _fenced_started_at: float  # the process start of that mysqld (0.0: unknown)
    _term: int
    _reader: threading.Thread | None
    _record_lock: threading.Lock  # one writer of the term record at a time (TermRecord)

    def fence_unreached(self) -> None:
        """A fence could not reach mysqld (stopped or not answering); see fence_by_crash."""
        if self._fenced_at is not None and not self._killed and not self._unreached:
            self._unreached = True
            self._save_fence_record()

    def fence(self, run_fence: Callable[[], _T]) -> _T:
        """Run the fence (KILL the client sessions, read_only ON) between two reads of
        ``Rpl_semi_sync_master_no_tx``. A commit waiting for an ack whose session the fence kills
        ends its wait with an error to its client, never an OK, yet MariaDB counts it there (and
        InnoDB commits it). What grew across the fence is put down to the fence (the gate is
        blocked before it) and is not held against this node's evidence; anything else that ended
        a wait then (a client's own KILL) has also cost its client only an error. A read that
        fails, or a mysqld restarted in between, attributes nothing: the evidence stays strict."""
        if self.mode == "manual" or self._fenced_at is None:
            return run_fence()
        with self.term.counting:  # no sample or evidence read between the KILLs and their count
            pid = self._mysqld_pid()
            before = self.term.unacknowledged_count()
            result = run_fence()
            if before is None:
                return result
            after = self.term.unacknowledged_count()
            if not (after is not None and after > before and pid and self._mysqld_pid() == pid):
                return result
            with self._lock:
                self._ended_by_fence += after - before
            self._save_fence_record()
            log.info(json.dumps({"event": "fence_ended_ack_waits", "node": self.node,
                                 "commits": after - before, "no_tx_before": before, "no_tx_after": after}))
        return result


    def fence_by_crash(self) -> bool:
        """Fence mysqld by SIGKILL when commits wait for a semi-sync ack, instead of killing their
        sessions: a killed session's commit is committed in InnoDB (durable within about a
        second), a SIGKILLed server's stays prepared and crash recovery can truncate it (measured,
        docs/operations.md). Also, with nothing waiting yet, the first time mysqld answers after a
        fence could not reach it: statements it had buffered meanwhile start committing as it
        resumes, and a KILL racing them would commit them too. Only with ``truncate``, after this
        agent saw the node leave PRIMARY (only FENCED starts mysqld again), and with evidence that
        proves lossless operation; False: fence as usual. An agent restarted meanwhile knows the
        fence (or the term, when it died while primary) from its record (TermRecord) and fences
        the same run of mysqld alike. Raises MysqlAdapterError when mysqld does not answer."""
        if self.mode != "truncate" or self._fenced_at is None:
            return False
        if not self._fenced_pid or self._run_changed():
            return False  # not the mysqld that was primary (restarted since): its counters say nothing
        try:
            evidence = self._read_attributed()
        except MysqlQueryError:
            return False  # a query failed on a reachable server: fence as usual
        if evidence.problem() is not None:
            return False
        if evidence.wait_sessions:
            why = "commits waited for a semi-sync ack"
        elif self._unreached:
            # Commits may be starting right now from statements sent before it stopped answering;
            # killing their sessions would commit them, a killed server keeps them in doubt.
            why = "mysqld answered again after a fence could not reach it"
        else:
            return False
        pid = self._mysqld_pid()
        evidence = replace(evidence, killed_by_fence=True)  # an agent restarted later still knows
        with self._lock:
            self._evidence = evidence
            self._killed = True
        save_evidence(self.state_dir, evidence)
        try:
            kill_mysqld(self.control.pid_file)
        except RepairError:
            with self._lock:
                self._killed = False
            raise
        log.warning(json.dumps({"event": "fenced_by_crash", "node": self.node, "pid": pid, "why": why,
                                "waiting_commits": evidence.wait_sessions,
                                "gtid_binlog_pos": evidence.gtid_binlog_pos,
                                "gtid_binlog_state": evidence.gtid_binlog_state}))
        return True

    def _read_attributed(self) -> FencingEvidence:
        """The evidence now, with what the fence ended so far: counted before the read, so never
        more than the counters read include (a fence running meanwhile only makes it stricter)."""
        return self.term.judged(lambda: read_evidence(self.mysql), self._fenced_pid, self._ended_by_fence)

    def _mysqld_pid(self) -> str:
        try:
            return self.control.pid_file.read_text().strip()
        except OSError:
            return ""

    def _run_changed(self) -> str:
        """'' while the mysqld that was primary runs (same pid, same process start: a stopped one
        too); else why its counters can no longer be read."""
        fenced, pid = self._fenced_pid, self._mysqld_pid()
        if pid == fenced and mysqld_running(self.control.pid_file):
            started = process_started_at(pid)
            known = bool(self._fenced_started_at and started)
            if not known or abs(started - self._fenced_started_at) <= SAME_PROCESS_SLACK_S:
                return ""
        elif pid == fenced or not pid:
            return (f"no evidence: mysqld (pid {fenced}) exited after fencing before its semi-sync "
                    "counters could be read")
        return (f"no evidence: mysqld restarted after fencing before its semi-sync counters could be "
                f"read (pid {fenced} at fencing, now {pid}): a new run's counters say nothing of the term")

    def _save_fence_record(self) -> None:
        """The fence on disk as it stands (TermRecord), for an agent restarted before the evidence
        is read; off the loop's thread where it can be (the reader writes the first one)."""
        with self._record_lock:
            with self._lock:
                fenced_at, pid, started = self._fenced_at, self._fenced_pid, self._fenced_started_at
                ended, unreached = self._ended_by_fence, self._unreached
            if fenced_at is None or self.term.active:
                return  # served again, or a new term began (its record counts now): nothing pending
            baseline, taint = self.term.ended_term()
            # The baseline as the term kept it, even of another run: then the evidence refuses.
            record = TermRecord(pid, started, baseline, taint, fenced_at=fenced_at, ended_by_fence=ended,
                                unreached=unreached)
            try:
                save_record(self.state_dir, record)
            except OSError as exc:  # an agent restarted later then has no evidence (stricter)
                log.warning(json.dumps({"event": "term_record_not_saved", "node": self.node,
                                        "error": str(exc)}))

    def _clear_record(self) -> None:
        with self._record_lock:
            problem = clear_record(self.state_dir)
        if problem:
            log.warning(json.dumps({"event": "term_record_not_cleared", "node": self.node, "error": problem}))

    def _resume_term(self) -> None:
        """At start: a term or fence the last agent left open (it died before the evidence was
        read) is resumed from its record, and the evidence read here from the same run of mysqld.
        A fence by crash then kills it too when commits wait (the startup fence is one)."""
        record = load_record(self.state_dir)
        if record is None or self._killed:
            return
        if isinstance(record, str):
            log.warning(json.dumps({"event": "term_record_unusable", "node": self.node, "error": record}))
            if not isinstance(self._evidence, FencingEvidence):
                self._evidence = f"no evidence: {record}"
            return
        taint = load_taint(self.state_dir)  # what sampling saw after the term began, if anything
        with self._lock:
            self._term += 1
            self._fenced_at = record.fenced_at if record.fenced_at is not None else self.wall()
            self._fenced_pid = record.pid
            self._fenced_started_at = record.process_started_at
            self._ended_by_fence = record.ended_by_fence
            self._unreached = record.unreached
        self.term.resume_ended(record.baseline, record.taint or (taint.problem if taint is not None else ""))
        read = isinstance(self._evidence, FencingEvidence)
        log.info(json.dumps({"event": "term_resumed", "node": self.node, "pid": record.pid,
                             "fenced_at": record.fenced_at, "unreached": record.unreached,
                             "ended_by_fence": record.ended_by_fence,
                             "evidence": "read before the restart" if read else "to read from the same run"}))
        if read:
            return  # read before the restart: the record still serves the fence by crash
        self._evidence = "evidence not read yet"
        self._reader = threading.Thread(target=self._read_evidence, args=(self.wall(),),
                                        name="repair-evidence", daemon=True)
        self._reader.start()

    def _read_evidence(self, window_from: float | None = None) -> None:
        """Read the semi-sync counters of the run of mysqld that was primary: the same pid and
        process as at fencing (a hung one may answer later); a restarted mysqld's counters say
        nothing. ``window_from``: an agent restarted later retries from its own start."""
        fenced_at = self._fenced_at
        assert fenced_at is not None
        self._save_fence_record()
        pid = self._fenced_pid
        problem = "mysqld did not answer after fencing"
        while pid and self.wall() < max(fenced_at, window_from or 0.0) + EVIDENCE_RETRY_FOR:
            if self._killed:
                return  # the fence by crash read it first
            changed = self._run_changed()
            if changed:
                problem = changed
                break
            try:
                evidence = self._read_attributed()
            except MysqlAdapterError as exc:
                problem = f"mysqld did not answer after fencing ({exc})"
                time.sleep(1.0)
                continue
            if self._killed:
                return  # the fence by crash killed it meanwhile, and recorded what it read
            changed = self._run_changed()
            if changed:
                problem = changed
                break
            with self._lock:
                if self._fenced_at == fenced_at and not self._killed:
                    save_evidence(self.state_dir, evidence)
                    self._evidence = evidence
            log.info(json.dumps({"event": "fencing_evidence", "node": self.node, **asdict(evidence),
                                 "problem": evidence.problem()}))
            return
        if not pid:
            problem = f"mysqld was not running at fencing (no pid in {self.control.pid_file})"
        with self._lock:
            if self._fenced_at == fenced_at and not self._killed:
                self._evidence = problem
        log.warning(json.dumps({"event": "fencing_evidence", "node": self.node, "problem": problem}))

"""The agent's side of ``[rejoin]``: the fencing evidence and the repair, off the decision loop.

Both read or restart mysqld, which can take seconds (a hung mysqld, crash recovery), so each runs
in a thread of its own and the loop only reads :meth:`RepairKeeper.view`. The decision whether to
repair is the core's (``dbfence.agent.rejoin``); this carries it out and reports back. The semi-sync
counters of the term the evidence judges (its reference, sampling, taint) are kept by
:class:`~dbfence.agent.term_watch.TermWatch`; the reading of the evidence at fencing and the fence
by crash are mixed in from :mod:`~dbfence.agent.repair_fencing`, the rebuild from
:mod:`~dbfence.agent.repair_rebuild`. A token discard that stopped half way (its intent file,
:mod:`~dbfence.mysql.discard_intent`) is finished, or refused with its reason, by
:meth:`RepairKeeper.settle_discard` before every errant check (the database sensor calls it) and at
the start of every repair attempt.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from dbfence.agent.actions import TruncateErrant
from dbfence.agent.gtid import BinlogState
from dbfence.agent.observation import RepairView
from dbfence.agent.rebuild_approval import APPROVE_HINT, DEFAULT_APPROVAL_TTL, approve_command
from dbfence.agent.repair_fencing import FencingRecorder, state_at_kill
from dbfence.agent.repair_rebuild import RebuildRunner
from dbfence.agent.term_record import process_started_at
from dbfence.agent.term_watch import TermWatch
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.binlog_tail import copy_binlog_tail
from dbfence.mysql.discard_intent import DiscardRefused, intent_path, settle
from dbfence.mysql.errors import MysqlAdapterError
from dbfence.mysql.gtid import GtidState
from dbfence.mysql.rebuild import Progress, RebuildResult
from dbfence.mysql.repair import (
    MysqldControl,
    RepairResult,
    binlog_files_of,
    mysqld_running,
    recover_killed,
    truncate_unacknowledged,
)
from dbfence.mysql.repair_errors import BinlogCutShort, NothingErrant, RepairDeferred, RepairError
from dbfence.mysql.repair_evidence import (
    FencingEvidence,
    clear_evidence,
    load_evidence,
)
from dbfence.mysql.semi_sync_term import clear_taint, load_taint

__all__ = ["GIVE_UP_AFTER", "RETRY_FIRST", "RETRY_MAX", "RepairKeeper", "state_at_kill"]

log = logging.getLogger("dbfence.agent")

#: Backoff of a repair of a mysqld the fence killed (it stays down until one attempt succeeds), and
#: of one that could not save its copy yet (a binlog or a state directory on a full disk).
RETRY_FIRST = 1.0
RETRY_MAX = 60.0
#: How long a repair of a mysqld the fence killed tries again after a failure that waiting cannot
#: mend (a RepairError, not a RepairDeferred): a few tries ride out a flaky start command or a
#: failover under way; then it gives up, saying why, and the node stays FENCED with mysqld down.
GIVE_UP_AFTER = 300.0
#: How often an intent file the state does not explain is judged again (each read is logged once).
SETTLE_RECHECK = 5.0

def _gave_up_while_down(error: Exception, attempts: int) -> str:
    return (f"repair failed: {error}; the same after {attempts} attempt(s): mysqld left down (killed by "
            "the fence: a start would remove commits no copy holds); rebuild this node, or save its "
            "binlog and start mysqld by hand")


class RepairKeeper(FencingRecorder, RebuildRunner):
    """Records the evidence when this node fences, runs a truncation when the core asks."""

    def __init__(self, *, mode: str, state_dir: Path, node: str, mysql: MysqlActions,
                 control: MysqldControl, on_done: Callable[[str, str], None] = lambda kind, detail: None,
                 wall: Callable[[], float] = time.time, api_token: str | None = None,
                 backup_tool: str = "mariadb-backup", mbstream_tool: str = "mbstream",
                 api_tls: ssl.SSLContext | None = None, mutual_tls: bool = False,
                 free_space_margin: int = 1 << 30, keep_old_datadirs: int = 1,
                 retry_max: float = RETRY_MAX, approval_ttl: float = DEFAULT_APPROVAL_TTL,
                 give_up_after: float = GIVE_UP_AFTER) -> None:
        self.mode = mode
        # While mysqld is down after a crash of its own: what its binlog files hold, and the server
        # id that wrote them (the daemon's DiskStateReader; RepairView.binlog_state_on_disk).
        self.on_disk: Callable[[], tuple[BinlogState | None, int | None]] = lambda: (None, None)
        self.approval_ttl = approval_ttl  # seconds an operator's rebuild approval counts (0: until spent)
        self.api_token = api_token  # the donor's HTTP API token (the same on every node)
        self.api_tls = api_tls  # the cluster CA and this agent's client certificate, for https donors
        self.mutual_tls = mutual_tls  # donors know us by that certificate (no token needed)
        self.backup_tool = backup_tool
        self.mbstream_tool = mbstream_tool
        self.free_space_margin = free_space_margin  # bytes a copy must leave free beyond its size
        self.keep_old_datadirs = keep_old_datadirs
        self.state_dir = state_dir
        self.node = node
        self.mysql = mysql
        self.control = control
        self.on_done = on_done  # (history kind, detail): the agent appends it to the DCS history
        self.wall = wall
        self.retry_max = retry_max
        self.give_up_after = give_up_after
        self._lock = threading.Lock()
        # Bumped when the node leaves PRIMARY or serves again: a repair that waits to try again
        # stops when its fence is spent.
        self._term = 0
        self._fenced_at: float | None = None
        self._evidence: FencingEvidence | str = "no evidence recorded"
        self._reader: threading.Thread | None = None
        self._worker: threading.Thread | None = None
        self.saved_file = ""
        self.gave_up = ""
        self.last_result: RepairResult | None = None
        self.gave_up_on = ""  # truncate | rebuild
        self.retrying = ""  # why a repair of a mysqld the fence killed waits to try again
        self.progress: Progress | None = None  # of the rebuild's copy
        self.last_rebuild: RebuildResult | None = None
        self._killed = False  # the fence killed mysqld; nobody has started it since
        # Commits whose ack wait our own fence's KILLs ended since this node last left PRIMARY
        # (RepairKeeper.fence); only grows between on_fencing and on_serving.
        self._ended_by_fence = 0
        # A fence since this node left PRIMARY could not reach mysqld (stopped, hung): whatever
        # it had buffered (its clients' statements, our heartbeat) runs when it answers again,
        # with read_only still OFF, and commits then wait for acks that never come.
        self._unreached = False
        self._fenced_pid = ""  # the mysqld that was primary: the only one the fence may crash
        self._fenced_started_at = 0.0  # its process's start: a later run may get the same pid
        self._record_lock = threading.Lock()
        # Held by a repair attempt throughout, and by a settle of an interrupted token discard: the
        # errant check never finishes a discard the repair is still running.
        self._discard_lock = threading.Lock()
        self._discard_refused: tuple[float, str] = (0.0, "")  # (when judged, why not finished)
        self.hold = ""  # why the core starts no repair now (its refusal), as the last round said
        # The semi-sync counters of this node's term as primary: its reference, samples and taint.
        # A restarted agent never resumes a term as primary; the evidence, the taint file and the
        # term's record (term_record.py: for a fence whose evidence was not read yet) keep it.
        self.term = TermWatch(mysql=mysql, state_dir=state_dir, node=node, pid=self._mysqld_pid,
                              enabled=mode != "manual")
        if mode != "manual":
            # Made at start, not at the first fence: an operator's rebuild approval is a file here,
            # and a fence that could not read its evidence (a stopped mysqld) would otherwise leave
            # no directory to put it in. An unwritable state directory fails the start, loudly.
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._evidence = load_evidence(state_dir)  # an agent restarted while fenced keeps it
            taint = load_taint(state_dir)  # what sampling saw during the term, should the file lack it
            evidence = self._evidence
            if isinstance(evidence, FencingEvidence) and taint is not None and not evidence.term_problem:
                self._evidence = replace(evidence, term_problem=taint.problem)
            self._killed = (isinstance(self._evidence, FencingEvidence) and self._evidence.killed_by_fence
                            and not mysqld_running(control.pid_file))
            self._resume_term()  # a fence (or term) the last agent left before its evidence was read

    # ------------------------------------------------------------------ role changes
    def on_promoted(self) -> None:
        """A replica was just promoted (semi-sync on, gate closed): its term's counters start here."""
        self.term.begin_promoted()

    def before_admit(self) -> None:
        """The gate is about to admit, semi-sync on: a term not begun by a promotion begins here."""
        self.term.before_admit()

    def on_stepped_down(self) -> None:
        """PROMOTING gave the lock back before writing anything (overtaken): no term to judge."""
        self.term.end()
        if self.mode != "manual":
            self._clear_record()

    def fence_pending(self) -> bool:
        """A fence of this node (or its term as primary, resumed from the record by a restarted
        agent) is not spent yet: its mysqld may hold in-doubt commits of that term."""
        with self._lock:
            return self.mode != "manual" and self._fenced_at is not None

    def on_followed(self) -> None:
        """This node replicates from the primary (a clean errant check came first): a fence an
        agent restarted in REPLICA resumed (STARTING passes into REPLICA) is spent as a rejoin's."""
        if self.mode != "manual" and self._fenced_at is not None and not self._killed:
            self.on_serving()

    def on_fencing(self) -> None:
        """The node stops being primary: forget older evidence and read this run's."""
        if self.mode == "manual":
            return
        # An approval given before this fence was for another one (or none): never for this one's.
        self._spend_approval("a new fence began after it was given")
        with self._lock:
            self._term += 1
            self._fenced_at = self.wall()
            self._evidence = "evidence not read yet"
            self.gave_up = self.gave_up_on = ""
            self._ended_by_fence = 0
            self._unreached = False
            self._fenced_pid = self._mysqld_pid()
            self._fenced_started_at = process_started_at(self._fenced_pid)
        self.term.end()
        clear_evidence(self.state_dir)
        self._reader = threading.Thread(target=self._read_evidence, name="repair-evidence", daemon=True)
        self._reader.start()

    def on_serving(self) -> None:
        """Primary again, or rejoined as a replica: the evidence of the last fence is spent, and so
        is an operator's rebuild approval given for it (it must not allow a later one)."""
        if self.mode == "manual":
            return
        self._spend_approval("the node serves again")
        with self._lock:
            self._term += 1
            self._fenced_at = None
            self._evidence = "no evidence recorded"
            self.gave_up = self.gave_up_on = ""
            self._killed = False
            self._ended_by_fence = 0
            self._unreached = False
        clear_evidence(self.state_dir)
        if not self.term.active:  # rejoined: the last term's taint and record are spent with its evidence
            clear_taint(self.state_dir)
            self._clear_record()

    def end_own_ack_wait(self, end: Callable[[], None], why: str = "none acknowledged it in time") -> None:
        """End an ack wait of the agent's own write; not held against a later fence (TermWatch)."""
        self.term.end_own_ack_wait(end, why)

    def own_switch_off(self, switch_off: Callable[[], None]) -> None:
        """Turn semi-sync's primary side off as the node demotes (gate closed); counted so that a
        later term of this mysqld judged since its start does not hold it as a fallback."""
        self.term.own_switch_off(switch_off)

    # ------------------------------------------------------------------ the core's view
    def view(self) -> RepairView:
        on_disk, on_disk_id = self.on_disk()
        with self._lock:
            evidence = self._evidence
            running = self._worker is not None and self._worker.is_alive()
            problem = evidence if isinstance(evidence, str) else evidence.problem()
            killed = evidence if self._killed and isinstance(evidence, FencingEvidence) else None
            return RepairView(evidence_problem=problem, running=running, gave_up=self.gave_up,
                              saved_file=self.saved_file, awaiting_restart=self._killed,
                              gave_up_on=self.gave_up_on, rebuild_approved=self._approved(),
                              binlog_state_at_kill=None if killed is None else state_at_kill(killed),
                              server_id_at_kill=killed.server_id if killed is not None and killed.server_id
                              else None,
                              binlog_state_on_disk=on_disk, server_id_on_disk=on_disk_id)

    def note_hold(self, hold: str) -> None:
        """The core's reason for starting no repair this round ('' when none): shown in status."""
        self.hold = hold

    def status(self) -> dict[str, Any]:
        view = self.view()
        result = self.last_result
        return {"mode": self.mode, "evidence_problem": view.evidence_problem, "running": view.running,
                "saved_file": view.saved_file, "gave_up": view.gave_up, "gave_up_on": view.gave_up_on,
                "ended_by_fence": self._ended_by_fence, "retrying": self.retrying, "waiting": self.hold,
                "rebuild_approved": view.rebuild_approved, "rebuild_approval": self._approval_status(),
                # What the binlog files of a mysqld down after a crash hold (published as at a kill).
                "binlog_state_on_disk": None if view.binlog_state_on_disk is None
                else str(view.binlog_state_on_disk),
                "approve_command": (approve_command(self.node, self.state_dir) if APPROVE_HINT in self.hold
                                    else None),
                "last": None if result is None else {
                    "errant_before": result.errant_before, "errant_after": result.errant_after,
                    "binlog_pos_before": result.binlog_pos_before,
                    "binlog_pos_after": result.binlog_pos_after, "seconds": round(result.seconds, 3),
                    "abandoned": result.abandoned, "discarded": result.discarded,
                    "kept_why": result.kept_why},
                "rebuild": self._rebuild_status(), "term": self.term.status()}

    # ------------------------------------------------------------------ the repair
    def start_truncate(self, action: TruncateErrant, primary_state: Callable[[], GtidState],
                       still_wanted: Callable[[], bool] = lambda: True) -> None:
        """Start the truncation the core asked for, unless one is already running.
        ``still_wanted``: whether the reference it was asked against still stands (that primary
        still holds the lock); a retrying repair stops when it no longer does, and the core asks
        again against whatever stands then."""
        with self._lock:
            if self._worker is not None and self._worker.is_alive():
                return
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.wall()))
            out = self.state_dir / f"errant-{self.node}-{stamp}.sql"
            self._worker = threading.Thread(target=self._truncate, args=(action, primary_state, out,
                                                                         still_wanted),
                                            name="repair", daemon=True)
            self._worker.start()

    def _truncate(self, action: TruncateErrant, primary_state: Callable[[], GtidState], out: Path,
                  still_wanted: Callable[[], bool]) -> None:
        evidence = self._evidence
        why = (f"so that it can replicate from {action.primary}" if action.reference is None else
               f"with no primary, judged against the others' binlog states {action.reference}")
        header = (f"-- dbfence: errant transactions of {self.node}, removed {why}\n"
                  f"-- GTIDs: {', '.join(action.gtids)}\n"
                  f"-- never acknowledged to a client; evidence recorded at fencing: "
                  f"{json.dumps(asdict(evidence)) if isinstance(evidence, FencingEvidence) else evidence}\n"
                  f"-- to apply them anyway (after review): mariadb < {out.name}\n")
        log.info(json.dumps({"event": "repair_started", "node": self.node, "primary": action.primary,
                             "gtids": list(action.gtids), "file": str(out),
                             "reference": None if action.reference is None else str(action.reference)}))
        attempt, delay, last_error, term = 0, RETRY_FIRST, "", self._term
        failing_since: float | None = None  # the first failure for good while mysqld is down
        while True:
            # A new name only after an attempt that left its copy (never written over).
            attempt_out = out if not out.exists() else out.with_name(f"{out.stem}-retry{attempt}{out.suffix}")
            try:
                result = self._attempt(evidence, primary_state, attempt_out, header)
                break
            except NothingErrant as exc:
                self._skipped(exc)
                return
            except Exception as exc:
                # An unexpected one too: a thread that ended without a result or a reason would be
                # started again every round, without back-off.
                if not isinstance(exc, (RepairError, MysqlAdapterError, OSError)):
                    log.exception("repair: unexpected error")
                    exc = RepairError(f"unexpected error: {exc!r}")
                down = self._killed and not mysqld_running(self.control.pid_file)
                if down and not isinstance(exc, RepairDeferred) and isinstance(exc, RepairError):
                    failing_since = failing_since or time.monotonic()
                    if time.monotonic() - failing_since >= self.give_up_after:
                        self._finish(attempt_out, _gave_up_while_down(exc, attempt + 1), None)
                        return
                if isinstance(exc, RepairDeferred) or down:
                    # Nothing removed, and the same attempt may succeed later: a disk freed (the
                    # binlog's tail written, room for the copy), the primary reachable again. A mysqld
                    # the fence killed stays down meanwhile: only a start removes its in-doubt
                    # commits, never without their copy.
                    attempt += 1
                    self._retrying(attempt, delay, str(exc), first=str(exc) != last_error, down=down)
                    last_error = str(exc)
                    time.sleep(delay)
                    delay = min(delay * 2, self.retry_max)
                    if self._term != term:  # primary again, or rejoined: that fence's repair is spent
                        self._abandoned(str(exc))
                        return
                    if not still_wanted():
                        # Its primary lost the lock (or a free lock was taken): retrying against it
                        # for ever kept a mysqld the fence killed down while nobody could become
                        # primary (soak seed 405). Nothing was removed; the core plans it again.
                        self._retargeted(action, str(exc))
                        return
                    continue
                if not mysqld_running(self.control.pid_file):
                    exc = RepairError(f"{exc}; mysqld is not running")
                self._killed = self._killed and not mysqld_running(self.control.pid_file)
                self._finish(attempt_out, f"repair failed: {exc}", None)
                return
        out = attempt_out
        if result.succeeded:
            self._finish(out, "", result)
        else:
            why = f" (not discarded as this node's own fencing-token writes: {result.kept_why})" * bool(
                result.kept_why)
            self._finish(out, f"{result.errant_after} survived crash recovery (committed in the engine)"
                              f"{why}: rebuild this node", result)

    # ------------------------------------------------------------------ an interrupted token discard
    def settle_discard(self, primary: GtidState) -> str:
        """Before an errant check against ``primary``: finish a token discard that stopped half way
        (:mod:`~dbfence.mysql.discard_intent`). "" when none is pending; else why the check waits
        this round (finished just now, a repair running, or a state the intent file does not
        explain: the node stays fenced, the reason in ``errant_problem``)."""
        if self.mode == "manual" or not intent_path(self.state_dir).exists():
            return ""
        judged_at, refused = self._discard_refused
        if refused and time.monotonic() - judged_at < SETTLE_RECHECK:
            return refused
        if not self._discard_lock.acquire(blocking=False):
            return f"a repair is running ({intent_path(self.state_dir)} names its token discard)"
        try:
            done, refused = self._settle(primary, during_repair=False)
            return refused or (f"{done}; checked again next round" if done else "")
        except (MysqlAdapterError, OSError) as exc:
            return f"cannot finish the token discard {intent_path(self.state_dir)} names: {exc}"
        finally:
            self._discard_lock.release()

    def _settle(self, primary: GtidState, *, during_repair: bool) -> tuple[str, str]:
        """One settle, the discard lock held: (what it did, why it refused), each "" if not that;
        a refusal is logged once per reason."""
        try:
            done = settle(self.mysql, self.state_dir, primary)
        except DiscardRefused as exc:
            if str(exc) != self._discard_refused[1]:
                log.warning(json.dumps({"event": "token_discard_unfinished", "node": self.node,
                                        "file": str(intent_path(self.state_dir)), "why": str(exc)}))
            self._discard_refused = (time.monotonic(), str(exc))
            return "", str(exc)
        self._discard_refused = (0.0, "")
        if not done:
            return "", ""
        log.warning(json.dumps({"event": "token_discard_finished", "node": self.node,
                                "file": str(intent_path(self.state_dir)), "done": done,
                                "by": "the repair" if during_repair else "the errant check"}))
        # Off this thread: the history is a DCS write, and the database sensor must not wait on it.
        threading.Thread(target=self.on_done, args=("repair", f"{done} (the discard had stopped half way)"),
                         name="repair-history", daemon=True).start()
        return done, ""

    def _attempt(self, evidence: FencingEvidence | str, primary_state: Callable[[], GtidState], out: Path,
                 header: str) -> RepairResult:
        with self._discard_lock:
            # A mysqld the fence killed is down: a discard of its could only be pending after a start.
            if not self._killed and intent_path(self.state_dir).exists():
                _, refused = self._settle(primary_state(), during_repair=True)
                if refused:
                    raise RepairError(refused)
            return self._attempt_locked(evidence, primary_state, out, header)

    def _attempt_locked(self, evidence: FencingEvidence | str, primary_state: Callable[[], GtidState],
                        out: Path, header: str) -> RepairResult:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self._killed and isinstance(evidence, FencingEvidence):
            base, datadir = evidence.log_bin_basename, evidence.datadir
            files = binlog_files_of(base, datadir)
            server_id, position = evidence.server_id, evidence.gtid_binlog_pos

            def recover(tail_abandoned: bool = False) -> RepairResult:
                return recover_killed(self.mysql, self.control, primary_state, files, server_id, position,
                                      out, header, tail_abandoned=tail_abandoned)
            try:
                return recover()
            except BinlogCutShort:
                # Killed inside a write a full disk held up: the rest of that commit will never be
                # written, and any start rolls it back. Its bytes are kept with every file recovery
                # reads, then the whole ones are saved and mysqld started.
                raw = out.with_name(f"{out.stem}-binlog")
                if not raw.exists():
                    copy_binlog_tail(self.control.binlog_tool, base, datadir, raw)
                try:
                    return recover(tail_abandoned=True)
                except BinlogCutShort as exc:  # nothing writes these files while mysqld is down
                    raise RepairError(f"{exc} (mysqld is down: no wait mends it)") from None
        return truncate_unacknowledged(self.mysql, self.control, primary_state, out, header)

    def _retrying(self, attempt: int, delay: float, error: str, *, first: bool, down: bool) -> None:
        why = ("mysqld left down (killed by the fence) until the repair can save what its recovery removes"
               if down else "nothing removed until the errant transactions are saved whole")
        with self._lock:
            self.retrying = f"{why}; attempt {attempt} failed: {error}; next in {delay:g} s"
        if first:  # an identical error again is only counted (status: retrying)
            log.warning(json.dumps({"event": "repair_retry", "node": self.node, "attempt": attempt,
                                    "next_in_s": delay, "error": error, "mysqld": "down" if down else "up"}))

    def _retargeted(self, action: TruncateErrant, error: str) -> None:
        """The reference this repair was asked against no longer stands: nothing removed."""
        with self._lock:
            self.retrying = ""
        log.info(json.dumps({"event": "repair_retargeted", "node": self.node, "last_error": error,
                             "why": (f"{action.primary} no longer holds the lock" if action.reference is None
                                     else "the free lock was taken")
                             + ": the repair is planned again against what stands now"}))

    def _abandoned(self, error: str) -> None:
        """The fence this repair was for is spent (the node serves again): nothing removed."""
        with self._lock:
            self.retrying = ""
        log.info(json.dumps({"event": "repair_abandoned", "node": self.node, "last_error": error,
                             "why": "the node left FENCED before the errant transactions could be saved"}))

    def _finish(self, out: Path, gave_up: str, result: RepairResult | None) -> None:
        saved = str(out) if out.exists() else ""
        with self._lock:
            self.retrying = ""
            if result is not None:
                self._killed = False
            self.saved_file = saved
            self.gave_up = gave_up
            self.gave_up_on = "truncate" if gave_up else ""
            self.last_result = result
        fields: dict[str, Any] = {"event": "repair_done", "node": self.node, "ok": not gave_up,
                                  "file": saved, "gave_up": gave_up}
        if result is not None:
            fields.update(removed=result.errant_before, left=result.errant_after,
                          seconds=round(result.seconds, 3), abandoned=result.abandoned,
                          discarded=result.discarded, kept_why=result.kept_why)
        (log.info if not gave_up else log.warning)(json.dumps(fields))
        where = f"; saved to {saved}" if saved else "; nothing saved"
        if gave_up:
            self.on_done("repair_failed", gave_up + where)
        else:
            assert result is not None
            cut = (f"; the binlog ended inside {result.abandoned} (its write abandoned on a full disk, never "
                   "committed): saved as far as it could be read" if result.abandoned else "")
            discarded = (f"; {result.discarded}: this node's own fencing-token write(s), committed "
                         "unacknowledged, survived crash recovery and were discarded (RESET MASTER)"
                         if result.discarded else "")
            self.on_done("repair", f"truncated {result.errant_before} in {result.seconds:.1f} s{where}{cut}"
                                   f"{discarded}")

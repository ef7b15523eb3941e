"""The agent's watch over the semi-sync counters of this node's term as primary ([rejoin]).

Why: the fencing evidence judges what a term added to MariaDB's semi-sync counters since it
began (:mod:`dbfence.mysql.repair_evidence`), and a ``FLUSH STATUS`` can zero them in between.
This keeps the term's reference, samples the counters while the term lasts and keeps what the
samples show as a taint (:mod:`dbfence.mysql.semi_sync_term` has the rules and the SQL).

Layout:

* A term begins at a promotion from a replica (:meth:`TermWatch.begin_promoted`: judged from
  then on) or, for any other way to PRIMARY (the first primary, an adopted one, a switchover
  withdrawn, a former primary whose agent restarted), just before its gate first admits
  (:meth:`TermWatch.before_admit`: judged since mysqld started, pinned to that run). A reference
  that cannot be read leaves the promotion to the first admit; there, it taints the term.
* A sampler thread reads the counters every :data:`SAMPLE_INTERVAL_S` while a term is active and
  taints it at the first finding; it backs off while mysqld does not answer.
* The term ends when the node fences or steps down (:meth:`TermWatch.end`); the evidence read
  then is judged with the term's reference, taint and the agent's own ended ack waits
  (:meth:`TermWatch.judged`).
* The agent's own switch-offs of semi-sync's primary side (as the node demotes: the repoint) each
  count a fallback in that run of mysqld; :meth:`TermWatch.own_switch_off` counts them, and a
  later term judged since mysqld start does not hold them against itself. In memory only: after
  an agent restart none are known, and that judgement stays as strict as before.

Invariants: lock order ``counting`` then ``_lock``. Every read of the counters that judges the
term, and every action of the agent that moves them (the fence's KILLs, ending its own token
write's wait, its switch-offs of semi-sync), holds ``counting``: a sample never sees a count the
agent has not attributed yet, and the evidence read at fencing comes after any sample in flight.
A taint only grows during a term; it is cleared only when a term begins (or by the keeper once its
evidence is spent).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from dbfence.agent.term_record import TermRecord, process_started_at, save_record
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.errors import MysqlAdapterError
from dbfence.mysql.repair_evidence import (
    SAME_START_SLACK_S,
    CounterBaseline,
    FencingEvidence,
    read_unacknowledged_count,
    since_baseline,
    utc,
)
from dbfence.mysql.semi_sync_term import (
    CounterSample,
    TermTaint,
    clear_taint,
    judge_sample,
    read_baseline,
    read_counters,
    save_taint,
)

log = logging.getLogger("dbfence.agent")

#: How often a primary's counters are sampled (one SHOW GLOBAL STATUS on a connection of its own).
SAMPLE_INTERVAL_S = 2.0
#: The longest pause between samples while mysqld does not answer them.
SAMPLE_BACKOFF_MAX_S = 30.0


class TermWatch:
    """The reference, the samples and the taint of this node's current (or last) term."""

    def __init__(self, *, mysql: MysqlActions, state_dir: Path, node: str, pid: Callable[[], str],
                 enabled: bool = True, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.mysql = mysql
        self.state_dir = state_dir
        self.node = node
        self.pid = pid  # the pid of the local mysqld now ('' when unknown)
        self.enabled = enabled
        self.interval_s = interval_s
        self.counting = threading.Lock()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._active = False
        self._generation = 0  # one per term: a sample of an earlier term never taints a later one
        self._baseline: CounterBaseline | None = None
        self._taint = ""
        # Set by end(): the ended term's reference (None: since mysqld started, whichever run), its
        # taint (a sample in flight as it ended may still add one) and its generation (-1: none).
        self._ended: tuple[CounterBaseline | None, str, int] = (None, "", -1)
        # Ack waits the agent ended of its own writes (a fencing-token write no replica answered):
        # (mysqld pid, count). No client saw them; they count for as long as that mysqld runs.
        self._own_ended: tuple[str, int] = ("", 0)
        # Fallbacks counted by the agent's own switch-offs of semi-sync with the gate closed:
        # (mysqld pid, its start, count). Never reset while that run lasts: a term judged since
        # its start takes them all off (a promoted term's reference already holds them).
        self._own_switch_offs: tuple[str, float, int] = ("", 0.0, 0)
        self.samples = 0

    @property
    def active(self) -> bool:
        with self._lock:
            return self._active

    @property
    def baseline(self) -> CounterBaseline | None:
        """The current (or last) term's reference; None: none recorded."""
        with self._lock:
            return self._baseline

    @property
    def taint(self) -> str:
        with self._lock:
            return self._taint

    def status(self) -> dict[str, Any]:
        """For ``/status``: a taint shows while the node is still primary, before any fence."""
        with self._lock:
            baseline = self._baseline
            return {"active": self._active, "samples": self.samples, "taint": self._taint or None,
                    "judged_since": None if baseline is None else
                    "mysqld start" if baseline.since_start else utc(baseline.recorded_at)}

    # ------------------------------------------------------------------ the term's start and end
    def begin_promoted(self) -> None:
        """A replica was just promoted (semi-sync on, gate closed): its term is judged from now."""
        if not self.enabled:
            return
        read = read_baseline(self.mysql, self.pid())
        if isinstance(read, str):  # the first admit takes one since mysqld started (stricter)
            log.warning(json.dumps({"event": "semi_sync_baseline", "node": self.node, "error": read}))
            return
        with self.counting, self._lock:  # own waits ended so far are in it (never taken off twice)
            self._own_ended = ("", 0)
        self._begin(read, "")

    def before_admit(self) -> None:
        """The gate is about to admit (semi-sync already on): a term without a promotion's
        reference begins here, judged since mysqld started (its earlier commits may be errant)."""
        if not self.enabled or self.active:
            return
        read = read_baseline(self.mysql, self.pid(), since_start=True)
        if isinstance(read, str):
            self._begin(None, f"the semi-sync counters could not be read as the term began ({read})")
        else:
            self._begin(read, "")

    def _begin(self, baseline: CounterBaseline | None, taint: str) -> None:
        with self.counting:
            not_cleared = clear_taint(self.state_dir)
            if not_cleared:
                log.warning(json.dumps({"event": "semi_sync_taint_not_cleared", "node": self.node,
                                        "error": not_cleared}))
            with self._lock:
                self._generation += 1
                self._active, self._baseline, self._taint = True, baseline, ""
                generation = self._generation
                if self._thread is None:
                    self._thread = threading.Thread(target=self._sample_loop, name="semi-sync-sampler",
                                                    daemon=True)
                    self._thread.start()
            if taint:
                self._record_taint(generation, taint, self.pid())
        self._wake.set()
        self._save_record(baseline, taint)
        fields = asdict(baseline) if baseline is not None else {"error": taint}
        log.info(json.dumps({"event": "semi_sync_baseline", "node": self.node, **fields}))

    def _save_record(self, baseline: CounterBaseline | None, taint: str) -> None:
        """The term on disk (gate still closed), for an agent restarted before its fence's evidence
        was read; one that cannot be written only leaves that agent without it (stricter)."""
        pid = baseline.pid if baseline is not None else self.pid()
        try:
            save_record(self.state_dir, TermRecord(pid, process_started_at(pid), baseline, taint))
        except OSError as exc:
            log.warning(json.dumps({"event": "term_record_not_saved", "node": self.node, "error": str(exc)}))

    def ended_term(self) -> tuple[CounterBaseline | None, str]:
        """The ended term's reference and taint, as the evidence will judge them."""
        with self._lock:
            return self._ended[0], self._ended[1]

    def resume_ended(self, baseline: CounterBaseline | None, taint: str) -> None:
        """An agent restarted during a fence: the ended term as its record kept it (TermRecord)."""
        with self._lock:
            self._ended = (baseline, taint, -1)

    def end(self) -> None:
        """The term is over (the node fences or steps down): sampling stops, the evidence read
        next is judged with what the term recorded. Without a term: since mysqld started."""
        with self._lock:
            self._ended = (self._baseline, self._taint, self._generation) if self._active else (None, "", -1)
            self._active = False
        self._wake.set()

    def judged(self, read: Callable[[], FencingEvidence], fenced_pid: str,
               ended_by_fence: int) -> FencingEvidence:
        """The evidence ``read`` now, judged by the ended term: its reference, its taint and the
        ack waits the agent ended itself (``ended_by_fence``: the fence's, counted before this)."""
        with self.counting:  # after any sample in flight and any fence still counting its KILLs
            own_pid, own = self._own_ended
            ended = ended_by_fence + (own if own_pid and own_pid == self.pid() else 0)
            with self._lock:
                baseline, taint, _ = self._ended
            evidence = since_baseline(read(), baseline, fenced_pid)
            switch_offs = self._switch_offs_of(self.pid(), evidence.started_at)
        if evidence.baseline_from == "mysqld start" and not evidence.baseline_problem:
            evidence = replace(evidence, own_switch_offs=switch_offs)
        return replace(evidence, ended_by_fence=ended, term_problem=taint)

    # ------------------------------------------------------------------ the agent's own switch-offs
    def own_switch_off(self, switch_off: Callable[[], None]) -> None:
        """Turn semi-sync's primary side off (``switch_off``) between two reads of
        ``Rpl_semi_sync_master_no_times``; what grew is not held against a later term of this
        run of mysqld judged since its start. The caller calls this only with its gate closed:
        a commit the switch-off releases then never reaches its client with an OK."""
        if not self.enabled:
            switch_off()
            return
        with self.counting:
            pid = self.pid()
            before = self._counters()
            switch_off()
            after = self._counters() if before is not None else None
            if (before is None or after is None or after.no_times <= before.no_times or not pid
                    or self.pid() != pid or after.flushed_after_s != before.flushed_after_s
                    or abs(after.started_at - before.started_at) > SAME_START_SLACK_S):
                return
            with self._lock:
                earlier = self._switch_offs_of(pid, before.started_at)
                self._own_switch_offs = (pid, before.started_at, earlier + after.no_times - before.no_times)
        log.info(json.dumps({"event": "semi_sync_own_switch_off", "node": self.node, "pid": pid,
                             "counted": after.no_times - before.no_times}))

    def _switch_offs_of(self, pid: str, started_at: float) -> int:
        """The own switch-offs counted in the run of mysqld (``pid``, ``started_at``); call it
        holding ``counting`` (every write holds it)."""
        own_pid, own_start, count = self._own_switch_offs
        same_run = bool(pid) and own_pid == pid and abs(own_start - started_at) <= SAME_START_SLACK_S
        return count if same_run else 0

    def _counters(self) -> CounterSample | None:
        try:
            return read_counters(self.mysql)
        except (MysqlAdapterError, ValueError):
            return None

    # ------------------------------------------------------------------ the agent's own ack waits
    def end_own_ack_wait(self, end: Callable[[], None], why: str = "none acknowledged it in time") -> None:
        """End an ack wait of the agent's own write (the fencing token: no client data, the gate
        has not admitted) between two reads of ``Rpl_semi_sync_master_no_tx``; what grew is not
        held against this mysqld's evidence, nor against a sample."""
        if not self.enabled:
            end()
            return
        with self.counting:
            pid = self.pid()
            before = self.unacknowledged_count()
            end()
            after = self.unacknowledged_count() if before is not None else None
            if before is None or after is None or after <= before or not pid or self.pid() != pid:
                return
            with self._lock:
                earlier = self._own_ended[1] if self._own_ended[0] == pid else 0
                self._own_ended = (pid, earlier + after - before)
        log.warning(json.dumps({"event": "token_ack_wait_ended", "node": self.node, "commits": after - before,
                                "why": f"no replica acknowledged the fencing-token write ({why}): it "
                                       "commits unacknowledged; if a crash cuts it off from the "
                                       "others, the repair discards it"}))

    def unacknowledged_count(self) -> int | None:
        try:
            return read_unacknowledged_count(self.mysql)
        except (MysqlAdapterError, ValueError):
            return None

    # ------------------------------------------------------------------ sampling
    def _sample_loop(self) -> None:
        previous: CounterSample | None = None
        sampled_generation, delay = -1, self.interval_s
        while True:
            with self._lock:
                active, generation, baseline, tainted = (self._active, self._generation, self._baseline,
                                                         bool(self._taint))
            if not active or baseline is None or tainted:
                self._wake.wait()  # nothing to watch until a term begins
                self._wake.clear()
                continue
            if generation != sampled_generation:
                previous, sampled_generation, delay = None, generation, self.interval_s
            if self._wake.wait(delay):
                self._wake.clear()
                continue  # the term changed meanwhile: look again
            try:
                sample = self._sample(generation, baseline, previous)
            except Exception:  # a bug: the thread must live on (the evidence at fencing still judges)
                log.exception("semi-sync sample failed")
                sample = None
            if sample is None:
                delay = min(delay * 2, SAMPLE_BACKOFF_MAX_S)
            else:
                previous, delay = sample, self.interval_s

    def _sample(self, generation: int, baseline: CounterBaseline,
                previous: CounterSample | None) -> CounterSample | None:
        """One sample of the term ``generation``, judged; None when mysqld did not answer."""
        with self.counting:
            with self._lock:
                if not self._active or self._generation != generation:
                    return previous
                own_pid, own = self._own_ended
            pid = self.pid()
            if not pid:
                return None  # mysqld gone: the evidence at fencing sees which run answers
            try:
                sample = read_counters(self.mysql)
            except (MysqlAdapterError, ValueError):
                return None
            self.samples += 1
            switch_offs = self._switch_offs_of(pid, sample.started_at)  # written only under counting
            problem = judge_sample(baseline, sample, previous, pid, own if own_pid == pid else 0, switch_offs)
            if problem is not None:
                self._record_taint(generation, problem, pid)
        return sample

    def _record_taint(self, generation: int, problem: str, pid: str) -> None:
        with self._lock:
            if self._generation != generation or self._taint:
                return
            self._taint = problem
            if self._ended[2] == generation:  # seen by a sample in flight as the term ended
                self._ended = (self._ended[0], problem, generation)
        try:
            save_taint(self.state_dir, TermTaint(problem, time.time(), pid))
        except OSError as exc:  # kept in memory: the evidence saved at fencing still carries it
            log.warning(json.dumps({"event": "semi_sync_taint_not_saved", "node": self.node,
                                    "error": str(exc)}))
        log.warning(json.dumps({"event": "semi_sync_term_tainted", "node": self.node, "problem": problem}))

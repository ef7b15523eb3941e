"""The semi-sync counters over one term as primary: the reference it starts from, samples, a taint.

Why. The fencing evidence (:mod:`dbfence.mysql.repair_evidence`) compares MariaDB's
``Rpl_semi_sync_master_no_times`` / ``_no_tx`` at fencing with a reference taken as the term began
(:class:`~dbfence.mysql.repair_evidence.CounterBaseline`). ``FLUSH STATUS`` zeroes both counters,
so a fallback counted and then flushed would look like a clean term. The evidence tells a flush
by ``Uptime - Uptime_since_flush_status``: both are computed from one statement's start time, so
their difference is exactly the flush's wall-clock second minus mysqld's start second (0 until
the first flush). A later flush is invisible in it only if it falls in the same wall-clock second
as the reference's flush time (mysqld's start or the previous flush), and a flush after a read of
the reference falls in that second only if that read saw ``Uptime_since_flush_status = 0``. So:

* :func:`read_baseline` reads the reference again, once that second has turned, whenever it saw
  0 (at most about a second, with the gate still closed): every later flush is then visible.
* While the node is primary the agent samples the counters every few seconds
  (:func:`read_counters`, one ``SHOW GLOBAL STATUS``) and :func:`judge_sample` names anything a
  clean term never shows: a fallback or an unacknowledged commit beyond the reference, a counter
  that went down, a new flush time, another run of mysqld. The first such finding taints the
  term (:class:`TermTaint`, kept in the state directory), and the evidence then refuses
  truncation whatever the counters say at fencing (defence in depth: a wall clock stepped back
  could still hide a flush from the flush time).

Invariants: nothing here runs ``FLUSH STATUS`` or writes to mysqld; a taint is only ever added
(:func:`save_taint` is atomic and fsynced) and is cleared only when a new term starts or the
evidence it belongs to is spent; an unreadable taint file reads as a taint (never as clean).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dbfence.durable import write_json_atomically
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.connection import query
from dbfence.mysql.errors import MysqlAdapterError
from dbfence.mysql.repair_evidence import SAME_START_SLACK_S, CounterBaseline, utc

TAINT_FILE = "term-taint.json"
#: How long a baseline read may wait for ``Uptime_since_flush_status`` to leave 0 (one second
#: turning over, with room for a loaded host).
BASELINE_REREAD_BUDGET_S = 2.5


@dataclass(frozen=True)
class CounterSample:
    """One read of the counters and of the two uptimes (whole seconds) that date a flush."""

    no_times: int
    no_tx: int
    uptime_s: int
    since_flush_s: int
    recorded_at: float

    @property
    def flushed_after_s(self) -> int:
        """The last FLUSH STATUS's second after mysqld's start (0: never flushed)."""
        return self.uptime_s - self.since_flush_s

    @property
    def started_at(self) -> float:
        return self.recorded_at - self.uptime_s


def read_counters(mysql: MysqlActions) -> CounterSample:
    """The semi-sync counters now (raises MysqlAdapterError, or ValueError when one is missing)."""
    with mysql.session(read_timeout_s=1.0) as conn:
        status = {str(row["Variable_name"]).lower(): str(row["Value"]) for row in query(
            conn, "SHOW GLOBAL STATUS WHERE Variable_name IN ('Rpl_semi_sync_master_no_times', "
                  "'Rpl_semi_sync_master_no_tx', 'Uptime', 'Uptime_since_flush_status')")}
    try:
        return CounterSample(no_times=int(status["rpl_semi_sync_master_no_times"]),
                             no_tx=int(status["rpl_semi_sync_master_no_tx"]), uptime_s=int(status["uptime"]),
                             since_flush_s=int(status["uptime_since_flush_status"]), recorded_at=time.time())
    except KeyError as exc:
        raise ValueError(f"status variable {exc} not reported (semi-sync plugin missing?)") from None


def read_baseline(mysql: MysqlActions, pid: str, *, since_start: bool = False,
                  budget_s: float = BASELINE_REREAD_BUDGET_S,
                  sleep: Callable[[float], None] = time.sleep) -> CounterBaseline | str:
    """The reference of a term of the mysqld with ``pid`` starting now, or why there is none.

    ``since_start``: the term is judged since mysqld started (a node that was not a replica just
    before: its earlier transactions may be errant too); the read then only pins down which run
    of mysqld it is. Either way a read that saw ``Uptime_since_flush_status = 0`` is repeated
    until it does not, so that any later FLUSH STATUS shows as a new flush time."""
    if not pid:
        return "no mysqld pid"
    deadline = time.monotonic() + budget_s
    while True:
        try:
            sample = read_counters(mysql)
        except (MysqlAdapterError, ValueError) as exc:
            return str(exc)
        if sample.since_flush_s >= 1:
            return baseline_of(sample, pid, since_start=since_start)
        if time.monotonic() >= deadline:
            return (f"Uptime_since_flush_status stayed 0 for {budget_s:g} s (FLUSH STATUS again and "
                    "again?): a later flush could not be told from the reference")
        sleep(0.2)


def baseline_of(sample: CounterSample, pid: str, *, since_start: bool) -> CounterBaseline:
    if since_start:  # the counters and flush time of a run never flushed, as of its start
        return CounterBaseline(pid, sample.started_at, 0, 0, 0, sample.recorded_at, since_start=True)
    return CounterBaseline(pid, sample.started_at, sample.flushed_after_s, sample.no_times, sample.no_tx,
                           sample.recorded_at)


def judge_sample(baseline: CounterBaseline, sample: CounterSample, previous: CounterSample | None,
                 pid: str, own_ended: int = 0, own_switch_offs: int = 0) -> str | None:
    """What ``sample`` (read from the mysqld with ``pid``) shows that a clean term never does, in
    one line; None when nothing. ``previous``: the term's last sample; ``own_ended``: ack waits
    of the agent's own writes that it ended itself (not a client's commit); ``own_switch_offs``:
    fallbacks this run of mysqld counted when the agent itself turned semi-sync off with the gate
    closed (as it demoted), taken off only for a term judged since mysqld start (a promotion's
    reference already holds those of its run)."""
    seen = f"seen by the agent's sampling at {utc(sample.recorded_at)}"
    origin = "mysqld start" if baseline.since_start else f"the promotion at {utc(baseline.recorded_at)}"
    if pid != baseline.pid or abs(sample.started_at - baseline.started_at) > SAME_START_SLACK_S:
        return (f"mysqld restarted during the term ({seen}: pid {baseline.pid or '?'}, now {pid or '?'}): "
                "the semi-sync counters of its term are gone")
    went_down = previous is not None and (sample.no_times < previous.no_times
                                          or sample.no_tx < previous.no_tx)
    if (sample.flushed_after_s != baseline.flushed_after_s or went_down
            or sample.no_times < baseline.no_times or sample.no_tx < baseline.no_tx):
        return f"FLUSH STATUS since {origin} ({seen}): the semi-sync counters of the term were reset"
    during = "since mysqld start" if baseline.since_start else "during the term"
    own = own_switch_offs if baseline.since_start else 0
    if sample.no_times - own > baseline.no_times:
        besides = f", {own} of them the agent's own switch-offs as it demoted" * bool(own)
        return (f"semi-sync fell back {during} ({seen}: Rpl_semi_sync_master_no_times "
                f"{sample.no_times}{besides}, {baseline.no_times} as it began)")
    unacknowledged = sample.no_tx - baseline.no_tx - own_ended
    if unacknowledged > 0:
        return (f"{unacknowledged} commit(s) were not acknowledged by a replica {during} ({seen}: "
                f"Rpl_semi_sync_master_no_tx {sample.no_tx}, {baseline.no_tx} as it began)")
    return None


@dataclass(frozen=True)
class TermTaint:
    """Why a term as primary can prove nothing, whatever its counters say at fencing."""

    problem: str
    seen_at: float
    pid: str = ""


def save_taint(state_dir: Path, taint: TermTaint) -> Path:
    """Write the taint atomically and durably (file and directory fsynced, mode 0600)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    return write_json_atomically(state_dir / TAINT_FILE, asdict(taint))


def load_taint(state_dir: Path) -> TermTaint | None:
    """The saved taint; None when there is none. A file that cannot be read is a taint too."""
    path = state_dir / TAINT_FILE
    try:
        raw: Any = json.loads(path.read_text())
        return TermTaint(**raw)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        return TermTaint(f"taint file {path} unusable: {exc}", 0.0)


def clear_taint(state_dir: Path) -> str:
    """Forget the taint; '' or why the file could not be removed (a taint left behind only ever
    makes a later judgement stricter, so this never stops a term from starting)."""
    try:
        (state_dir / TAINT_FILE).unlink(missing_ok=True)
    except OSError as exc:
        return f"could not remove {state_dir / TAINT_FILE}: {exc}"
    return ""

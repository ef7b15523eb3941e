"""Truncating a fenced former primary's unacknowledged transactions through crash recovery.

What MariaDB 10.11 does (measured, docs/operations.md "Repairing a former primary"): a commit
that waits for a semi-sync ack is in the binlog and *prepared* in InnoDB; after SIGKILL, a server
started with ``rpl_semi_sync_slave_enabled = ON`` and ``init_rpl_role = SLAVE`` rolls it back
and truncates the binlog before it. A clean shutdown, or a KILL of the waiting session, commits
it instead, and recovery then keeps it. So the repair is:

1. write the errant transactions out of the binlog files (``mariadb-binlog``) into a file in
   the agent's state directory, and check that the file holds every one of them, each whole;
2. SIGKILL mysqld (the pid in its pid file), never a clean stop;
3. run the start command (which must start mysqld with both options) and wait for it to answer;
4. read its GTID state again: whatever is still errant against the primary survived recovery
   (committed in the engine);
5. if that is only this node's own fencing-token writes (a promotion nobody could follow ends their
   ack wait, and they commit unacknowledged), proven by their content, they are discarded
   (:mod:`token_discard`); anything else left means the repair has failed.

Nothing here decides whether the transactions may go: that is the decision core's
(``dbfence.agent.rejoin``), from the evidence in :mod:`repair_evidence`.

The excerpt and its checks (a full disk, a binlog that ends inside a transaction) are
:mod:`binlog_excerpt`'s; the errors, :mod:`repair_errors`'s. A KILL of the session waiting for disk
space (the fence's) ends the wait: the write fails, the engine rolls the commit back, its GTID stays
counted and the file ends inside it for good; with no session left waiting for space, that end is
saved as far as it reads (``tail_abandoned``) and the repair goes on. So does the repair of a
mysqld the fence killed inside such a write, once the caller has kept the binlog files byte for
byte (:mod:`dbfence.mysql.binlog_tail`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dbfence.mysql.actions import GtidPositions, MysqlActions
from dbfence.mysql.binlog_excerpt import OPEN_END_SEQ, save_errant, save_excerpt
from dbfence.mysql.connection import query_one
from dbfence.mysql.errors import MysqlAdapterError
from dbfence.mysql.gtid import ErrantRange, Gtid, GtidPosition, GtidState, describe_errant
from dbfence.mysql.repair_errors import BinlogCutShort, NothingErrant, RepairError
from dbfence.mysql.token_discard import NotDiscardable, apply_discard, plan_discard


@dataclass(frozen=True)
class RepairResult:
    """What a repair did: the saved file, the GTIDs before and after, and the time it took."""

    saved_file: Path
    errant_before: str
    errant_after: str
    binlog_pos_before: str
    binlog_pos_after: str
    seconds: float
    # Errant GTIDs whose write the binlog ends inside or before (abandoned on a full disk): saved
    # only as far as they could be read; nothing of them was in the engine.
    abandoned: str = ""
    # This node's own fencing-token writes that survived recovery, discarded (token_discard).
    discarded: str = ""
    # Why what survived recovery was not discarded as token writes ('' when nothing survived).
    kept_why: str = ""

    @property
    def succeeded(self) -> bool:
        return not self.errant_after


@dataclass(frozen=True)
class MysqldControl:
    """How the agent stops and starts its mysqld for a repair."""

    pid_file: Path
    start_command: Sequence[str]
    start_timeout: float = 600.0
    binlog_tool: str = "mariadb-binlog"


def binlog_files(mysql: MysqlActions) -> list[Path]:
    """The binlog files of the local mysqld, oldest first, as absolute paths."""
    with mysql.session() as conn:
        row = query_one(conn, "SELECT @@global.log_bin_basename AS base, @@global.datadir AS datadir")
    return binlog_files_of(str(row["base"] or ""), str(row["datadir"] or ""))


def binlog_files_of(base: str, datadir: str) -> list[Path]:
    """The binlog files named in ``<base>.index`` (mysqld may be down), oldest first."""
    if not base:
        raise RepairError("binary logging is off: nothing to save or truncate")
    index = Path(f"{base}.index")
    try:
        names = [line.strip() for line in index.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise RepairError(f"cannot read the binlog index {index}: {exc.strerror}") from None
    return [Path(name) if os.path.isabs(name) else Path(str(datadir)) / name for name in names]


def waiting_for_disk_space(mysql: MysqlActions) -> int:
    """Sessions whose write waits for disk space (mysys's thread state while it retries)."""
    with mysql.session() as conn:
        return int(query_one(conn, "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST "
                                   "WHERE STATE = 'Waiting for someone to free space'")["n"])


def _last_size(files: Sequence[Path]) -> int:
    try:
        return files[-1].stat().st_size
    except (OSError, IndexError):
        return -1


def kill_mysqld(pid_file: Path, timeout: float = 30.0) -> int:
    """SIGKILL the mysqld named by ``pid_file`` and wait until it is gone; returns its pid.

    SIGKILL, never a clean stop: a shutdown commits the transactions that wait for an ack.
    """
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        raise RepairError(f"cannot read mysqld's pid from {pid_file}: {exc}") from None
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        raise RepairError(f"pid {pid} from {pid_file} is not running") from None
    if comm not in ("mariadbd", "mysqld"):
        raise RepairError(f"pid {pid} from {pid_file} is {comm!r}, not mysqld: not killed")
    try:
        os.kill(pid, signal.SIGKILL)
    except PermissionError:
        raise RepairError(f"not allowed to kill mysqld (pid {pid}): run the agent as the mysql user "
                          "or give it CAP_KILL (docs/operations.md)") from None
    except ProcessLookupError:
        return pid
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
        if time.monotonic() > deadline:
            raise RepairError(f"mysqld (pid {pid}) still there {timeout:g} s after SIGKILL")
        time.sleep(0.02)
    return pid


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat.rsplit(")", 1)[-1].split()[0]


def start_mysqld(control: MysqldControl, mysql: MysqlActions) -> None:
    """Run the start command and wait until mysqld answers (crash recovery happens meanwhile)."""
    try:
        done = subprocess.run(list(control.start_command), capture_output=True, timeout=control.start_timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RepairError(f"start command {list(control.start_command)} failed: {exc}") from None
    if done.returncode != 0:
        raise RepairError(f"start command {list(control.start_command)} exited {done.returncode}: "
                          f"{done.stderr.decode(errors='replace')[:500]}")
    deadline = time.monotonic() + control.start_timeout
    while True:
        try:
            mysql.gtid_positions()
            return
        except MysqlAdapterError as exc:
            if time.monotonic() > deadline:
                raise RepairError(f"mysqld did not answer {control.start_timeout:g} s after the start "
                                  f"command: {exc}") from None
            time.sleep(0.1)


def recover_killed(mysql: MysqlActions, control: MysqldControl, primary_state: Callable[[], GtidState],
                   files: Sequence[Path], server_id: int, binlog_pos_before: str, out: Path,
                   header: str, *, tail_abandoned: bool = False) -> RepairResult:
    """The same repair for a mysqld the agent killed while commits waited for an ack (the fence by
    crash): save this server's transactions the primary lacks straight from the binlog files,
    then start mysqld so that recovery truncates the in-doubt ones, and report what is left.
    BinlogCutShort: the files end inside a commit mysqld was writing to a full disk when it was
    killed; the caller keeps them byte for byte and calls again with ``tail_abandoned``."""
    started = time.monotonic()
    if mysqld_running(control.pid_file):
        raise RepairError(f"mysqld ({control.pid_file}) is running again, not started by the repair: "
                          "its recovery may have kept the transactions that waited")
    primary = primary_state()
    ranges = [ErrantRange(domain, server_id, seq, OPEN_END_SEQ, primary_has_stream=True)
              for (domain, writer), seq in sorted(primary.streams.items()) if writer == server_id]
    # A domain this node last wrote in (its position at fencing) of which the primary holds nothing
    # of this server: its first transactions as primary; all of that stream is errant.
    ranges += [ErrantRange(gtid.domain, server_id, 0, OPEN_END_SEQ, primary_has_stream=False)
               for gtid in GtidPosition.parse(binlog_pos_before).gtids
               if gtid.server_id == server_id and (gtid.domain, server_id) not in primary.streams]
    if not ranges:
        raise RepairError(f"neither the primary nor this node's position at fencing ({binlog_pos_before}) "
                          f"holds a transaction of server {server_id}: cannot tell which are errant")
    saved, abandoned = save_excerpt(control.binlog_tool, files, ranges, out, header, exact=False,
                                    tail_abandoned=tail_abandoned)
    start_mysqld(control, mysql)
    left, after, discarded, kept_why = discard_own_tokens(mysql, primary_state, out, saved)
    return RepairResult(saved_file=out, errant_before=",".join(map(str, saved)),
                        errant_after=describe_errant(left), binlog_pos_before=binlog_pos_before,
                        binlog_pos_after=str(after.binlog_pos), seconds=time.monotonic() - started,
                        abandoned=abandoned, discarded=discarded, kept_why=kept_why)


def discard_own_tokens(mysql: MysqlActions, primary_state: Callable[[], GtidState], out: Path,
                       saved: Sequence[Gtid], step_done: Callable[[str], None] | None = None
                       ) -> tuple[tuple[ErrantRange, ...], GtidPositions, str, str]:
    """After recovery: what is still errant, the positions, what was discarded and why not. Left
    errant transactions that are only this node's fencing-token writes, saved in ``out``, are
    discarded (:mod:`token_discard`), its intent file next to ``out`` (the state directory);
    anything else stays, with the reason."""
    after = mysql.gtid_positions()
    primary = primary_state()  # one read for the check and the plan
    left = after.history.errant_against(primary)
    if not left:
        return left, after, "", ""
    try:
        plan = plan_discard(mysql, left, out.read_text(), saved, primary)
    except NotDiscardable as exc:
        return left, after, "", str(exc)
    except OSError as exc:
        return left, after, "", f"cannot read the excerpt {out}: {exc.strerror or exc}"
    except MysqlAdapterError as exc:  # nothing changed yet: gives up as before, saying why
        return left, after, "", f"could not read what is left: {exc}"
    try:
        apply_discard(mysql, plan, out.parent, step_done)
    except NotDiscardable as exc:
        return left, after, "", str(exc)
    after = mysql.gtid_positions()
    return after.history.errant_against(primary_state()), after, str(plan), ""


def mysqld_running(pid_file: Path) -> bool:
    """Whether the pid in ``pid_file`` is a live mysqld (a killed one leaves its pid file)."""
    try:
        pid = int(pid_file.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return False
    return comm in ("mariadbd", "mysqld") and _state(pid) not in ("Z", "gone")


def truncate_unacknowledged(mysql: MysqlActions, control: MysqldControl,
                            primary_state: Callable[[], GtidState], out: Path, header: str, *,
                            step_done: Callable[[str], None] | None = None) -> RepairResult:
    """Save the errant transactions, SIGKILL mysqld, start it so that recovery truncates them,
    and report what is still errant against the primary (empty: repaired).

    Raises RepairError before the kill when anything about the copy is wrong: nothing is
    removed without a complete copy. ``step_done`` (tests): see :func:`discard_intent.run_discard`.
    """
    started = time.monotonic()
    before = mysql.gtid_positions()
    ranges = before.history.errant_against(primary_state())
    if not ranges:
        raise NothingErrant("nothing errant against the primary any more")
    files = binlog_files(mysql)
    abandoned = ""
    try:
        saved = save_errant(control.binlog_tool, files, ranges, out, header)
    except BinlogCutShort:
        if waiting_for_disk_space(mysql):
            raise  # a write under way: it may finish once the disk is freed
        size = _last_size(files)
        saved, abandoned = save_excerpt(control.binlog_tool, files, ranges, out, header, tail_abandoned=True)
        if waiting_for_disk_space(mysql) or _last_size(files) != size:  # a write began meanwhile after all
            out.unlink(missing_ok=True)
            raise BinlogCutShort("the binlog grew while its cut end was saved: tried again later") from None
    kill_mysqld(control.pid_file)
    start_mysqld(control, mysql)
    left, after, discarded, kept_why = discard_own_tokens(mysql, primary_state, out, saved, step_done)
    return RepairResult(saved_file=out, errant_before=describe_errant(ranges),
                        errant_after=describe_errant(left),
                        binlog_pos_before=str(before.binlog_pos), binlog_pos_after=str(after.binlog_pos),
                        seconds=time.monotonic() - started, abandoned=abandoned, discarded=discarded,
                        kept_why=kept_why)

"""Truncating a fenced former primary's unacknowledged transactions through crash recovery.

What MariaDB 10.11 does (measured, docs/operations.md "Repairing a former primary"): a commit
that waits for a semi-sync ack is in the binlog and *prepared* in InnoDB; after SIGKILL, a server
started with ``rpl_semi_sync_slave_enabled = ON`` and ``init_rpl_role = SLAVE`` rolls it back
and truncates the binlog before it. A clean shutdown, or a KILL of the waiting session, commits
it instead, and recovery then keeps it. So the repair is:

1. write the errant transactions out of the binlog files (``mariadb-binlog``) into a file in
   the agent's state directory, and check that the file holds every one of them;
2. SIGKILL mysqld (the pid in its pid file), never a clean stop;
3. run the start command (which must start mysqld with both options) and wait for it to answer;
4. read its GTID state again: whatever is still errant against the primary survived recovery
   (committed in the engine) and the repair has failed.

Nothing here decides whether the transactions may go: that is the decision core's
(``dbfence.agent.rejoin``), from the evidence in :mod:`repair_evidence`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.connection import query_one
from dbfence.mysql.errors import MysqlAdapterError
from dbfence.mysql.gtid import (
    ErrantRange,
    Gtid,
    GtidPosition,
    GtidState,
    describe_errant,
    in_errant_ranges,
    parse_binlog_gtid_list,
    ranges_predate,
)

_GTID_IN_DUMP = re.compile(r"^#.*\bGTID (\d+-\d+-\d+)\b", re.MULTILINE)
_GTID_LIST_IN_DUMP = re.compile(r"^#.*\bGtid list (\[[^\]]*\])", re.MULTILINE)


class RepairError(MysqlAdapterError):
    """A repair step failed; the message says which and what was left as it was."""


class NothingErrant(RepairError):
    """Nothing is errant against the primary (any more): the request came from facts read before
    an earlier repair finished. Nothing was done, and nothing failed."""


@dataclass(frozen=True)
class RepairResult:
    """What a repair did: the saved file, the GTIDs before and after, and the time it took."""

    saved_file: Path
    errant_before: str
    errant_after: str
    binlog_pos_before: str
    binlog_pos_after: str
    seconds: float

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


def save_errant(tool: str, files: Sequence[Path], ranges: Sequence[ErrantRange], out: Path,
                header: str, *, exact: bool = True) -> list[Gtid]:
    """Write exactly the transactions of ``ranges`` as replayable binlog events to ``out``
    (mode 0600); returns the GTIDs written. Raises RepairError unless every one is there
    (``exact``), or (not ``exact``: open-ended ranges of a mysqld that is down) unless everything
    found lies in them."""
    if not ranges:
        raise RepairError("no errant transactions to save")
    server_ids = {r.server_id for r in ranges}
    if len(server_ids) != 1:
        raise RepairError(f"errant transactions of several servers ({sorted(server_ids)}): not saved")
    whole_stream = [r for r in ranges if not r.primary_has_stream]
    starts: dict[int, Gtid] = {}
    for r in ranges:  # start after the last GTID the primary has in each errant domain
        if r.domain not in starts or r.after_seq < starts[r.domain].seq:
            starts[r.domain] = Gtid(r.domain, r.server_id, r.after_seq)
    # A stream the primary never saw (this node's first transactions as primary): every GTID of
    # it is errant, so read the files from their start; the first file's Gtid list then proves
    # that no older (purged) file held one of them.
    start = ",".join(str(g) for g in sorted(starts.values()))
    position = [] if whole_stream else [f"--start-position={start}"]
    # --verbose adds each row as a commented pseudo-statement: readable, and still replayable.
    argv = [tool, "--verbose", *position, f"--server-id={server_ids.pop()}", *map(str, files)]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RepairError(f"{tool} failed: {exc}") from None
    text = done.stdout.decode("utf-8", "replace")
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace")
        # mariadb-binlog refuses a GTID start position that is the files' very last transaction
        # ("never reached expected GTID state"), which is what a killed primary whose every
        # commit reached the new primary looks like: nothing after it to save.
        if not (_NEVER_REACHED in stderr and not whole_stream and ends_at(tool, files, starts)):
            raise RepairError(f"{tool} exited {done.returncode}: {stderr[:500]}")
        text = f"-- nothing errant: the binlog ends at {start}, which the primary has\n"
    found = [Gtid.parse(m) for m in _GTID_IN_DUMP.findall(text)]
    written = [g for g in found if in_errant_ranges(g, ranges)]
    expected = sum(r.last_seq - r.after_seq for r in ranges if r.primary_has_stream)
    if whole_stream:
        first_list = _GTID_LIST_IN_DUMP.search(text)
        complete = first_list is not None and ranges_predate(parse_binlog_gtid_list(first_list.group(1)),
                                                             whole_stream)
        # Seq numbers of a stream the primary lacks need not be consecutive (its domain had other
        # writers before): the whole stream is there from the first file on, and its last GTID.
        counted = [g for g in written if not in_errant_ranges(g, whole_stream)]
        ends = all(r.last in written for r in whole_stream if r.last_seq != _MAX_SEQ)
        ok = complete and ends and (not exact or len(counted) == expected) and len(written) == len(found)
    else:
        ok = (not exact or len(written) == expected) and len(written) == len(found)
    if not ok:
        raise RepairError(
            f"the binlog excerpt does not match the errant set {describe_errant(ranges)}: "
            f"found {','.join(map(str, found)) or 'nothing'}")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as dump:
        dump.write(header)
        dump.write(text)
        dump.flush()
        os.fsync(dump.fileno())
    return written


_NEVER_REACHED = "never reached expected GTID state"


def ends_at(tool: str, files: Sequence[Path], last: dict[int, Gtid]) -> bool:
    """Whether the binlog files end, in each domain of ``last``, with exactly that GTID.

    Reads the files newest first, and only as far back as it must: a domain's last GTID is in
    the newest file that holds any of that domain."""
    seen: dict[int, Gtid] = {}
    for path in reversed(files):
        newest_here: dict[int, Gtid] = {}
        for gtid in _gtids_in(tool, path):
            if gtid.domain in last and gtid.domain not in seen:
                newest_here[gtid.domain] = gtid
        seen.update(newest_here)
        if len(seen) == len(last):
            break
    return seen == last


def _gtids_in(tool: str, path: Path) -> list[Gtid]:
    """The GTIDs of one binlog file, in order; its events are streamed, not kept (files are large)."""
    try:
        with subprocess.Popen([tool, str(path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, errors="replace") as reader:
            assert reader.stdout is not None
            found = [Gtid.parse(match.group(1)) for line in reader.stdout
                     if (match := _GTID_IN_DUMP.match(line)) is not None]
    except OSError as exc:
        raise RepairError(f"{tool} failed on {path}: {exc}") from None
    if reader.returncode != 0:
        raise RepairError(f"{tool} exited {reader.returncode} on {path}")
    return found


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
                   header: str) -> RepairResult:
    """The same repair for a mysqld the agent killed while commits waited for an ack (the fence by
    crash): save this server's transactions the primary lacks straight from the binlog files,
    then start mysqld so that recovery truncates the in-doubt ones, and report what is left."""
    started = time.monotonic()
    if mysqld_running(control.pid_file):
        raise RepairError(f"mysqld ({control.pid_file}) is running again, not started by the repair: "
                          "its recovery may have kept the transactions that waited")
    primary = primary_state()
    ranges = [ErrantRange(domain, server_id, seq, _MAX_SEQ, primary_has_stream=True)
              for (domain, writer), seq in sorted(primary.streams.items()) if writer == server_id]
    # A domain this node last wrote in (its position at fencing) of which the primary holds nothing
    # of this server: its first transactions as primary; all of that stream is errant.
    ranges += [ErrantRange(gtid.domain, server_id, 0, _MAX_SEQ, primary_has_stream=False)
               for gtid in GtidPosition.parse(binlog_pos_before).gtids
               if gtid.server_id == server_id and (gtid.domain, server_id) not in primary.streams]
    if not ranges:
        raise RepairError(f"neither the primary nor this node's position at fencing ({binlog_pos_before}) "
                          f"holds a transaction of server {server_id}: cannot tell which are errant")
    saved = save_errant(control.binlog_tool, files, ranges, out, header, exact=False)
    start_mysqld(control, mysql)
    after = mysql.gtid_positions()
    left = after.history.errant_against(primary_state())
    return RepairResult(saved_file=out, errant_before=",".join(map(str, saved)),
                        errant_after=describe_errant(left), binlog_pos_before=binlog_pos_before,
                        binlog_pos_after=str(after.binlog_pos), seconds=time.monotonic() - started)


_MAX_SEQ = 2**64 - 1


def mysqld_running(pid_file: Path) -> bool:
    """Whether the pid in ``pid_file`` is a live mysqld (a killed one leaves its pid file)."""
    try:
        pid = int(pid_file.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return False
    return comm in ("mariadbd", "mysqld") and _state(pid) not in ("Z", "gone")


def truncate_unacknowledged(mysql: MysqlActions, control: MysqldControl,
                            primary_state: Callable[[], GtidState], out: Path, header: str) -> RepairResult:
    """Save the errant transactions, SIGKILL mysqld, start it so that recovery truncates them,
    and report what is still errant against the primary (empty: repaired).

    Raises RepairError before the kill when anything about the copy is wrong: nothing is
    removed without a complete copy.
    """
    started = time.monotonic()
    before = mysql.gtid_positions()
    ranges = before.history.errant_against(primary_state())
    if not ranges:
        raise NothingErrant("nothing errant against the primary any more")
    save_errant(control.binlog_tool, binlog_files(mysql), ranges, out, header)
    kill_mysqld(control.pid_file)
    start_mysqld(control, mysql)
    after = mysql.gtid_positions()
    left = after.history.errant_against(primary_state())
    return RepairResult(saved_file=out, errant_before=describe_errant(ranges),
                        errant_after=describe_errant(left),
                        binlog_pos_before=str(before.binlog_pos), binlog_pos_after=str(after.binlog_pos),
                        seconds=time.monotonic() - started)

"""The binlog state of a mysqld that is down, read from its binlog files.

Why: a former primary whose mysqld crashed and cannot start again (soak seed 443: MariaDB 10.11's
crash recovery refused a corrupt redo log, for good) never answers ``SELECT @@gtid_binlog_state``,
and without what it may hold no other node can prove a takeover: the cluster waited for it for
ever. Its binlog files say it: the last file's ``Gtid list`` event is the binlog state when mysqld
began that file (every older file, purged ones too), and the GTIDs after it in that file are what
it wrote since. Their union, newest seq per (domain, server) stream, is ``gtid_binlog_state`` as
it was when mysqld died (measured against a SIGKILLed 10.11: tests/mysql/test_binlog_on_disk_lab.py).

Why it is an upper bound of what the node holds: a crash adds nothing to the files, and crash
recovery only removes (a transaction prepared in the engine and not in the binlog is rolled back;
one in the binlog and not committed in the engine is committed or, with ``init_rpl_role = SLAVE``,
cut). A group the files end inside (a write cut by a full disk) is counted: it is in no history,
and counting it only errs high. What can only err low is refused (RepairError), never guessed: a
binlog file numbered after the index's last (a rotation the index did not record), or a last file
whose ``Gtid list`` cannot be read. What a replica applied without binlogging it (``RESET MASTER``
and ``SET GLOBAL gtid_slave_pos``, as a rebuild or the token discard do) is not in the files: the
caller merges the applied position it last read while mysqld ran.

Layout: :func:`binlog_state_on_disk` runs ``mariadb-binlog`` on the last file;
:func:`parse_binlog_dump` reads its output (pure, table-tested). The server id is the one of the
file's format description event: the mysqld that wrote the file.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dbfence.mysql.gtid import Gtid, GtidState, parse_binlog_gtid_list
from dbfence.mysql.repair import binlog_files_of
from dbfence.mysql.repair_errors import RepairError

# Event header lines only ("#261207 21:12:01 server id 2  end_log_pos 416 ... \tGTID 0-2-37262 trans"),
# never a row's or a statement's text ("#Q> INSERT ... 'GTID 0-9-9'").
_HEADER = r"^#\d{6} +\d{1,2}:\d{2}:\d{2} server id (\d+) [^\n]*\t"
_GTID_IN_DUMP = re.compile(_HEADER + r"GTID (\d+-\d+-\d+)\b", re.MULTILINE)
_GTID_LIST_IN_DUMP = re.compile(_HEADER + r"Gtid list (\[[^\]]*\])", re.MULTILINE)
_WRITER_IN_DUMP = re.compile(_HEADER + r"Start: binlog v \d+", re.MULTILINE)
_NUMBERED = re.compile(r"\.(\d+)$")


@dataclass(frozen=True, slots=True)
class DiskBinlogState:
    """What the binlog files of a mysqld that is down hold."""

    state: GtidState  # as gtid_binlog_state would say
    server_id: int  # the mysqld that wrote the last file
    file: Path  # the last file, read


def parse_binlog_dump(text: str) -> tuple[GtidState, int]:
    """The binlog state and writer's server id from ``mariadb-binlog``'s output of one file (the
    file's Gtid list, then its GTIDs). Raises RepairError when the file's header or Gtid list is
    not in it."""
    writer = _WRITER_IN_DUMP.search(text)
    listed = _GTID_LIST_IN_DUMP.search(text)
    if writer is None or listed is None:
        raise RepairError("the binlog file's start (format description and Gtid list events) is not "
                          "readable: its state is unknown")
    newest: dict[tuple[int, int], Gtid] = {(g.domain, g.server_id): g
                                           for g in parse_binlog_gtid_list(listed.group(2)).gtids}
    for match in _GTID_IN_DUMP.finditer(text, listed.end()):
        gtid = Gtid.parse(match.group(2))
        key = (gtid.domain, gtid.server_id)
        if key not in newest or gtid.seq > newest[key].seq:
            newest[key] = gtid
    return GtidState.of(newest.values()), int(writer.group(1))


def binlog_state_on_disk(tool: str, base: str, datadir: str, *, timeout: float = 300.0) -> DiskBinlogState:
    """Read the binlog state of the stopped mysqld whose binlog is ``base`` (``log_bin_basename``)
    from its files. Raises RepairError when it cannot be told without guessing low."""
    files = binlog_files_of(base, datadir)
    if not files:
        raise RepairError(f"the binlog index {base}.index names no file")
    last = files[-1]
    later = _files_after(Path(base), last)
    if later:
        raise RepairError(f"binlog file(s) {', '.join(p.name for p in later)} after the index's last "
                          f"({last.name}): the index missed a rotation; the state is unknown")
    try:
        done = subprocess.run([tool, str(last)], capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RepairError(f"{tool} failed on {last}: {exc}") from None
    # Not checked: its exit status and errors. A file cut inside an event (a full disk) makes it
    # complain, and what it read before still counts (see the module's docstring).
    state, server_id = parse_binlog_dump(done.stdout.decode("utf-8", "replace"))
    return DiskBinlogState(state, server_id, last)


def _files_after(base: Path, last: Path) -> list[Path]:
    """Binlog files ``<base>.NNNNNN`` numbered after ``last``."""
    match = _NUMBERED.search(last.name)
    if match is None:
        return []
    number = int(match.group(1))
    found = []
    for path in base.parent.glob(f"{base.name}.[0-9]*"):
        numbered = _NUMBERED.search(path.name)
        if numbered is not None and path.name.startswith(f"{base.name}.") and int(numbered.group(1)) > number:
            found.append(path)
    return sorted(found)

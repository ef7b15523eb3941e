"""The excerpt of a fenced former primary's errant transactions, checked before anything goes.

Why: the repair (:mod:`repair`) and the rebuild (:mod:`rebuild`) remove transactions that exist
nowhere else. Before either does, the transactions are written out of the binlog files
(``mariadb-binlog``) into a file in the agent's state directory, and that file is checked to hold
every one of them, each whole. This module is that copy and its checks; it removes nothing.

Layout:

* :func:`save_excerpt` (and :func:`save_errant`, its GTIDs only) runs ``mariadb-binlog`` from the
  last GTID the primary has in each errant domain (or from the files' start, for a stream the
  primary never saw: the first file's Gtid list then proves no purged file held one), reads the
  GTIDs out of its output, tells whole groups from cut ones (:func:`_group_is_whole`), and compares
  what it found with the errant set (:func:`_missing_tail` names what the files end before; a
  stream that skips seqs is checked against what other servers wrote in its domain,
  :func:`_seqs_of_others`: a node primary again after a rejoin, the new primary holding nothing
  of its new term);
* :func:`_remnants` finds an earlier crash's cut group in an older file (below), left out;
* :func:`_write_excerpt` writes the file whole or not at all;
* :func:`ends_at` (with :func:`_gtids_in`) tells whether the files end exactly at a GTID: what a
  refused start position means when the primary has every transaction.

A full disk (measured on 10.11, tests/mysql/test_mysql_repair_full_disk_lab.py): mysqld counts a
commit in ``@@gtid_binlog_pos`` before its events are in the binlog file, and when the file cannot
grow it writes what fits and waits for space ("Waiting for someone to free space"), retrying once a
minute. The file then ends inside that transaction: ``mariadb-binlog`` prints what it could read
(sometimes its GTID, sometimes not), reports "Event truncated" on stderr, and exits 0 (or 1 when
the cut came before the first GTID it was to print: "Binary logs never reached expected GTID
state"; a file a rotation created has no whole header yet: "Failed reading header", exit 1).
Such an excerpt is incomplete, not wrong, and may be whole later: :class:`BinlogCutShort` (a
:class:`RepairDeferred`), like an excerpt that finds no room in the state directory. Only a
mismatch that waiting cannot mend (a GTID outside the errant set, a gap before the last one
found) is a :class:`RepairError` for good. With ``tail_abandoned`` (nothing writes that end any
more: the fence's KILL ended the wait, or the fence killed mysqld inside the write), the end is
saved as far as it reads, and named in the file.

Such a cut end outlives its repair when recovery truncated nothing (no commit waited for an ack):
mysqld starts a new file whose Gtid list no longer counts it, and a later fence's excerpt, started
from an older GTID of the same stream (the new primary got nothing of this node's next term), reads
through it (soak seed 305, tests/mysql/test_mysql_repair_full_disk_again_lab.py). A group cut short
at the end of a file that is not the last one, and that the next file's Gtid list does not count, is
such a remnant: nobody's transaction, left out of the checks and named in the file.

Invariants: nothing is returned unless the file holds every errant transaction (``exact``) or
everything found lies in the errant set (open-ended ranges of a mysqld that is down), each whole
except a named abandoned end; the file is whole or absent, mode 0600, and never replaces an
earlier one.
"""

from __future__ import annotations

import bisect
import errno
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dbfence.durable import fsync_directory
from dbfence.mysql.gtid import (
    ErrantRange,
    Gtid,
    describe_errant,
    in_errant_ranges,
    parse_binlog_gtid_list,
    ranges_predate,
)
from dbfence.mysql.repair_errors import BinlogCutShort, RepairDeferred, RepairError

#: The last seq of an open-ended errant range (a mysqld that is down: its last GTID unknown).
OPEN_END_SEQ = 2**64 - 1

_GTID_IN_DUMP = re.compile(r"^#.*\bGTID (\d+-\d+-\d+)\b", re.MULTILINE)
_GTID_LIST_IN_DUMP = re.compile(r"^#.*\bGtid list (\[[^\]]*\])", re.MULTILINE)
# The event that ends a group: a transaction's XID, or a Query event (its COMMIT, or a DDL's
# statement: a group that is not "trans" is that one event).
_XID_IN_DUMP = re.compile(r"^#.*\tXid = \d+", re.MULTILINE)
_QUERY_IN_DUMP = re.compile(r"^#.*\tQuery\t", re.MULTILINE)
_COMMIT_IN_DUMP = re.compile(r"^COMMIT/\*!\*/;$", re.MULTILINE)
_TRANS_FLAG = re.compile(r"\btrans\b")
# mariadb-binlog's errors for binlog files that end early (measured on a full disk, 10.11);
# "Failed reading header": a file a rotation on a full disk created, its header not written yet.
_CUT_SHORT = re.compile(r"read_log_event|Event truncated|Failed reading header|Could not read entry at")
# Files that end before the start position; a cut only with one of the above, or when the errant
# set is known to exist (``exact``: counted by a running mysqld). Alone, for a mysqld that is
# down, it may be a binlog that ends where the primary's history does: nothing after it.
_NEVER_REACHED = "never reached expected GTID state"
_FILE_START_IN_DUMP = re.compile(r"^#.*\tStart: binlog v \d+", re.MULTILINE)


def save_errant(tool: str, files: Sequence[Path], ranges: Sequence[ErrantRange], out: Path,
                header: str, *, exact: bool = True, tail_abandoned: bool = False) -> list[Gtid]:
    """:func:`save_excerpt`, the GTIDs written whole only."""
    return save_excerpt(tool, files, ranges, out, header, exact=exact, tail_abandoned=tail_abandoned)[0]


def save_excerpt(tool: str, files: Sequence[Path], ranges: Sequence[ErrantRange], out: Path,
                 header: str, *, exact: bool = True, tail_abandoned: bool = False) -> tuple[list[Gtid], str]:
    """Write exactly the transactions of ``ranges`` as replayable binlog events to ``out``
    (mode 0600); returns the GTIDs written whole, and what of the set the binlog ends inside or
    before (``tail_abandoned`` only; '' when nothing). Raises RepairError unless every one is there
    (``exact``), or (not ``exact``: open-ended ranges of a mysqld that is down) unless everything
    found lies in them; BinlogCutShort when the files end inside or before the last of them.

    ``tail_abandoned``: nothing writes that end any more (no session waits for disk space: the
    fence's KILL ended the wait, its write failed and the engine rolled the transaction back,
    measured). The errant transactions the files end inside or before, the last of the set, are
    then saved as far as they can be read and named in the file, instead of waited for."""
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
    server_id = server_ids.pop()
    argv = [tool, "--verbose", *position, f"--server-id={server_id}", *map(str, files)]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RepairError(f"{tool} failed: {exc}") from None
    text = done.stdout.decode("utf-8", "replace")
    stderr = done.stderr.decode(errors="replace")
    errors = [line for line in stderr.splitlines() if line.startswith("ERROR")]
    # An earlier crash's cut groups in older files are nobody's transactions: left out, and the
    # errors their files' ends cause are theirs, not this excerpt's.
    headers = list(_GTID_IN_DUMP.finditer(text))
    remnants = _remnants(tool, files, text, headers)
    errors = _without_first_cuts(errors, sum(r.cut_errors for r in remnants.values()))
    cut_short = [line for line in errors if _CUT_SHORT.search(line)]
    never_reached = [line for line in errors if _NEVER_REACHED in line]
    # mariadb-binlog refuses a GTID start position that is the files' very last transaction
    # ("never reached expected GTID state"), which is what a killed primary whose every commit
    # reached the new primary looks like: nothing after it to save. With an event cut besides,
    # the files end inside a transaction instead (a full disk).
    nothing_after = (done.returncode != 0 and bool(never_reached) and len(never_reached) == len(errors)
                     and not whole_stream and ends_at(tool, files, starts))
    if nothing_after:
        text, errors = f"-- nothing errant: the binlog ends at {start}, which the primary has\n", []
        headers, remnants = [], {}
    elif cut_short or exact:
        cut_short += never_reached
    if done.returncode != 0 and not nothing_after and not cut_short:
        raise RepairError(f"{tool} exited {done.returncode}: {stderr[:500]}")
    # A binlog that ends inside an event: it exits 0 once it has passed the start position and
    # says so on stderr only, 1 when the cut came before ("never reached expected GTID state").
    if errors and not (tail_abandoned and len(cut_short) == len(errors)):
        first = (cut_short or errors)[0][:200]
        raise BinlogCutShort(f"{tool} could not read the binlog to its end ({first}): its last transaction "
                             "is not wholly on disk (mysqld waiting for space to write it?); nothing removed")
    # An abandoned end is the last file's: every file before it must have been read (each one's
    # format description event printed; a last file cut in its header has none).
    files_read = len(files) if nothing_after else len(_FILE_START_IN_DUMP.findall(text))
    header_cut = any("Failed reading header" in e for e in errors)
    if tail_abandoned and files_read < len(files) - (1 if header_cut else 0):
        raise BinlogCutShort(f"{tool} stopped in binlog file {files_read + 1} of {len(files)}, not at the "
                             f"last one's end ({(errors or ['no error'])[0][:200]}); nothing removed")
    groups = [group for index, group in enumerate(_groups(text, headers)) if index not in remnants]
    headers = [m for index, m in enumerate(headers) if index not in remnants]
    found = [Gtid.parse(m.group(1)) for m in headers]
    whole = [_group_is_whole(*group) for group in groups]
    written = [g for g, ok in zip(found, whole, strict=True) if ok and in_errant_ranges(g, ranges)]
    cut = [g for g, ok in zip(found, whole, strict=True) if not ok and in_errant_ranges(g, ranges)]
    if cut and not tail_abandoned:
        raise BinlogCutShort(f"the binlog holds only the start of {','.join(map(str, cut))} (the rest not on "
                             "disk yet: mysqld waiting for space to write it?); nothing removed")
    if cut and any(whole[found.index(cut[0]):]):
        raise RepairError(f"the binlog holds only the start of {cut[0]}, and whole transactions after it")
    foreign = len(written) + len(cut) != len(found)
    expected = sum(r.last_seq - r.after_seq for r in ranges if r.primary_has_stream)
    counted = [g for g in written if not in_errant_ranges(g, whole_stream)]
    taken: frozenset[tuple[int, int]] = frozenset()
    if exact and not foreign and len(counted) != expected and not whole_stream:
        # A node that rejoined and was primary again: the new primary may hold none of its new term,
        # and the seqs its stream skips are the other primary's, in the same domain (seed 305).
        taken = _seqs_of_others(tool, position, files, server_id, {r.domain for r in ranges})
        expected = sum(len(_own_seqs(r, taken)) for r in ranges)
    if whole_stream:
        first_list = _GTID_LIST_IN_DUMP.search(text)
        complete = first_list is not None and ranges_predate(parse_binlog_gtid_list(first_list.group(1)),
                                                             whole_stream)
        # Seq numbers of a stream the primary lacks need not be consecutive (its domain had other
        # writers before): the whole stream is there from the first file on, and its last GTID.
        ends = all(r.last in written for r in whole_stream if r.last_seq != OPEN_END_SEQ)
        ok = complete and ends and (not exact or len(counted) == expected) and not foreign
    else:
        complete = True
        # Each seq once: none of those found is one another server took (counted alike otherwise).
        clash = any((g.domain, g.seq) in taken for g in written)
        ok = (not exact or (len(written) == expected and not clash)) and not foreign
    abandoned = ""
    if not ok:
        missing = _missing_tail(ranges, written, taken) if complete and not foreign else None
        if missing and tail_abandoned and {str(g) for g in cut} <= set(missing.split(",")):
            abandoned = missing
        elif missing:
            raise BinlogCutShort(
                f"the binlog files end before {missing}, the last of the errant set "
                f"{describe_errant(ranges)} (counted in gtid_binlog_pos, not on disk yet: mysqld waiting "
                f"for space to write it?); "
                f"found {','.join(map(str, found)) or 'nothing'}; nothing removed")
        else:
            raise RepairError(
                f"the binlog excerpt does not match the errant set {describe_errant(ranges)}: "
                f"found {','.join(map(str, found)) or 'nothing'}")
    if tail_abandoned and not abandoned and (cut or cut_short):  # open-ended ranges: nothing missing
        abandoned = ",".join(map(str, cut)) or "the last transaction (cut before its GTID)"
    for remnant in remnants.values():
        header += (f"-- left out: {remnant.gtid}, the start of a transaction cut short at the end of "
                   f"{remnant.file.name} by an earlier crash or full disk; the next file's GTID list does "
                   "not count it (dropped by that restart: never committed, in nobody's history); the "
                   "next file's start rolls its text below back\n")
    if abandoned:
        header += (f"-- the binlog ends inside or before {abandoned}: its write was abandoned on a full disk "
                   "(its session or mysqld killed: never committed nor acknowledged); below as far as it "
                   "could be read\n")
    _write_excerpt(out, header + text)
    return written, abandoned


def _groups(text: str, headers: Sequence[re.Match[str]]) -> list[tuple[str, str]]:
    """Each GTID event's comment line and the text of its group (up to the next GTID event)."""
    groups = []
    # not strict: no GTID event, no group (the list of ends still has the text's end)
    for m, end in zip(headers, [m.start() for m in headers[1:]] + [len(text)], strict=False):
        line_end = text.find("\n", m.end())
        line_end = end if line_end < 0 or line_end > end else line_end
        groups.append((text[m.start():line_end], text[line_end:end]))
    return groups


@dataclass(frozen=True)
class _Remnant:
    """A group cut short at the end of a binlog file that is not the last: mysqld never goes on
    with a group in another file, so a crash (or a killed write to a full disk, then a restart)
    ended it there, and the restart's new file began with a GTID state that does not count it."""

    gtid: Gtid
    file: Path
    cut_errors: int  # the read errors its file's end causes on its own (0: cut at an event's end)


def _remnants(tool: str, files: Sequence[Path], text: str,
              headers: Sequence[re.Match[str]]) -> dict[int, _Remnant]:
    """The remnants among the dump's groups, by their index in ``headers``. Strict: a cut group
    is one only when the next file's Gtid list is in the dump and does not count it."""
    file_starts = [m.start() for m in _FILE_START_IN_DUMP.finditer(text)]
    found: dict[int, _Remnant] = {}
    for index, (match, (header, body)) in enumerate(zip(headers, _groups(text, headers), strict=True)):
        next_file = _FILE_START_IN_DUMP.search(body)
        if next_file is None or _group_is_whole(header, body[:next_file.start()]):
            continue  # the output's last group (the last file's end), or a whole one
        listed = _GTID_LIST_IN_DUMP.search(body, next_file.end())
        number = bisect.bisect_right(file_starts, match.start())  # the group's file, counted from 1
        if listed is None or not 1 <= number < len(files):
            continue
        gtid = Gtid.parse(match.group(1))
        if parse_binlog_gtid_list(listed.group(1)).streams.get((gtid.domain, gtid.server_id), 0) >= gtid.seq:
            continue  # the state the next file began with counts it: in this node's history
        found[index] = _Remnant(gtid, files[number - 1], _cut_errors(tool, files[number - 1]))
    return found


def _cut_errors(tool: str, path: Path) -> int:
    """How many cut-short read errors one binlog file causes when read alone."""
    try:
        done = subprocess.run([tool, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RepairError(f"{tool} failed on {path}: {exc}") from None
    return sum(1 for line in done.stderr.decode(errors="replace").splitlines()
               if line.startswith("ERROR") and _CUT_SHORT.search(line))


def _without_first_cuts(errors: Sequence[str], count: int) -> list[str]:
    """``errors`` without its first ``count`` cut-short ones (older files are read first)."""
    kept = []
    for line in errors:
        if count and _CUT_SHORT.search(line):
            count -= 1
            continue
        kept.append(line)
    return kept


def _group_is_whole(header: str, body: str) -> bool:
    """Whether a group's events in the dump reach its end: a transaction's XID or COMMIT, a
    standalone (DDL) group's one Query event. A file cut at an event boundary inside the group
    reads without an error, and only this tells."""
    if _TRANS_FLAG.search(header[header.index("GTID"):]):
        return _XID_IN_DUMP.search(body) is not None or _COMMIT_IN_DUMP.search(body) is not None
    return _QUERY_IN_DUMP.search(body) is not None


def _seqs_of_others(tool: str, position: Sequence[str], files: Sequence[Path], server_id: int,
                    domains: set[int]) -> frozenset[tuple[int, int]]:
    """The (domain, seq) of every other server's GTID in ``domains`` from the start position on.
    Errors are not raised: a part not read excuses nothing, and the excerpt stays refused."""
    argv = [tool, *position, *map(str, files)]
    taken: set[tuple[int, int]] = set()
    try:
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              errors="replace") as reader:
            assert reader.stdout is not None
            for line in reader.stdout:
                if (match := _GTID_IN_DUMP.match(line)) is not None:
                    gtid = Gtid.parse(match.group(1))
                    if gtid.server_id != server_id and gtid.domain in domains:
                        taken.add((gtid.domain, gtid.seq))
    except OSError as exc:
        raise RepairError(f"{tool} failed: {exc}") from None
    return frozenset(taken)


def _own_seqs(r: ErrantRange, taken: frozenset[tuple[int, int]]) -> list[int]:
    """The seqs of ``r`` (its primary has its stream) that no other server took in its domain."""
    return [s for s in range(r.after_seq + 1, r.last_seq + 1) if (r.domain, s) not in taken]


def _missing_tail(ranges: Sequence[ErrantRange], written: Sequence[Gtid],
                  taken: frozenset[tuple[int, int]] = frozenset()) -> str:
    """The errant GTIDs the excerpt lacks, when they are all after every one it holds of their
    range (the files end early, as after a full disk); '' when a gap lies before a GTID found or
    the missing ones cannot be named (an open-ended range): that mismatch waiting cannot mend."""
    missing: list[str] = []
    for r in ranges:
        if r.last_seq == OPEN_END_SEQ:
            continue
        seqs = sorted(g.seq for g in written if g.domain == r.domain and g.server_id == r.server_id
                      and r.after_seq < g.seq <= r.last_seq)
        if not r.primary_has_stream:  # seqs need not be consecutive: only its end is known
            if r.last_seq not in seqs:
                missing.append(str(r.last))
            continue
        expected = _own_seqs(r, taken)
        if seqs != expected[:len(seqs)]:
            return ""  # a gap before one found
        missing += [str(Gtid(r.domain, r.server_id, s)) for s in expected[len(seqs):]]
    return ",".join(missing)


def _write_excerpt(out: Path, text: str) -> None:
    """Write ``text`` to ``out`` (mode 0600, never over an existing file) whole or not at all: a
    disk that fills meanwhile leaves no partial file that would pass for the copy."""
    partial = out.with_name(f".{out.name}.partial")
    data = text.encode()
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(partial, out)  # fails if out exists: an earlier copy is never replaced
        fsync_directory(out.parent)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RepairDeferred(f"no space left in {out.parent} for the excerpt ({len(data)} bytes); "
                                 "nothing removed") from None
        raise RepairError(f"cannot write the excerpt {out}: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)


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

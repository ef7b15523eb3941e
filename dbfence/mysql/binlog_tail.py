"""A raw copy of the binlog files that crash recovery may cut, taken while mysqld is down.

Why: a fenced former primary whose mysqld crashed on its own holds errant transactions the
agent may not have saved yet. Starting it runs crash recovery, which (with the repair's
``init_rpl_role = SLAVE``) rolls back and cuts from the binlog every transaction not committed in
the engine: never acknowledged, but their only copy is in those files. So the agent copies them
first (:mod:`dbfence.agent.restart_rule` decides, the restarter calls this).

What is copied: recovery reads the binlog from the file named by the last ``Binlog checkpoint``
event (MariaDB writes one at the start of every file and moves it on as the engine catches up) to
the end; those files, byte for byte, are copied into one directory of the state directory. No
primary is needed to tell which transactions are errant: the copy holds them all, and
``mariadb-binlog`` reads it like the originals.

Invariants: the copy is whole or absent (written under a temporary name, synced, then renamed);
an existing copy is never replaced; no room is a :class:`RepairDeferred` (try again later).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from pathlib import Path

from dbfence.durable import fsync_directory
from dbfence.mysql.repair import binlog_files_of
from dbfence.mysql.repair_errors import RepairDeferred, RepairError

_CHECKPOINT_IN_DUMP = re.compile(r"^#.*\tBinlog checkpoint (\S+)", re.MULTILINE)
#: Where a running mysqld keeps its binlog and writes its error log (remembered for while it is down).
LOCATION_QUERY = ("SELECT @@global.log_bin_basename AS base, @@global.datadir AS datadir, "
                  "@@global.log_error AS log_error")
#: Room the copy leaves free on its file system beyond its own size.
MARGIN = 16 << 20


def recovery_files(tool: str, base: str, datadir: str) -> list[Path]:
    """The binlog files crash recovery reads: from the last checkpoint's file to the last one.
    A file whose checkpoint cannot be read (cut by a full disk) defers to the one before it."""
    files = binlog_files_of(base, datadir)
    if not files:
        raise RepairError(f"the binlog index {base}.index names no file")
    for newest in range(len(files) - 1, -1, -1):
        try:
            done = subprocess.run([tool, str(files[newest])], capture_output=True, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RepairError(f"{tool} failed: {exc}") from None
        named = _CHECKPOINT_IN_DUMP.findall(done.stdout.decode("utf-8", "replace"))
        if not named:
            continue
        checkpoint = Path(named[-1]).name
        first = next((i for i, f in enumerate(files) if f.name == checkpoint), None)
        if first is None:
            raise RepairError(f"the binlog checkpoint {checkpoint} (in {files[newest].name}) is not in "
                              "the index")
        return files[first:]
    raise RepairError(f"no binlog checkpoint readable in {', '.join(f.name for f in files)}")


def copy_binlog_tail(tool: str, base: str, datadir: str, out: Path) -> list[Path]:
    """Copy the files :func:`recovery_files` names into the new directory ``out`` (mode 0700);
    returns the copies. Raises RepairDeferred when ``out``'s file system lacks the room."""
    files = recovery_files(tool, base, datadir)
    try:
        needed = sum(f.stat().st_size for f in files)
    except OSError as exc:
        raise RepairError(f"cannot read the binlog files: {exc}") from None
    if out.exists():
        raise RepairError(f"{out} exists already: an earlier copy is never replaced")
    free = shutil.disk_usage(out.parent).free
    if free < needed + MARGIN:
        raise RepairDeferred(f"no room in {out.parent} for a copy of {len(files)} binlog file(s) "
                             f"({needed} bytes, {free} free); nothing started")
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(mode=0o700)
        for f in files:
            shutil.copyfile(f, partial / f.name)
            fd = os.open(partial / f.name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        partial.rename(out)
        fsync_directory(out.parent)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RepairDeferred(f"no space left in {out.parent} for the binlog copy; nothing "
                                 "started") from None
        raise RepairError(f"cannot copy the binlog to {out}: {exc.strerror or exc}") from None
    return [out / f.name for f in files]

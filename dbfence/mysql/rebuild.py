"""Rebuilding a fenced node from a donor with ``mariadb-backup`` (``[rejoin] mode = rebuild``).

Used when truncation cannot remove the errant transactions (committed in the engine) or cannot
be proven safe. Two halves:

* the **donor** (the primary or a healthy replica) runs ``mariadb-backup --backup
  --stream=mbstream`` on its own data directory and hands the stream out, throttled to a byte
  rate so that its clients stay served (:class:`BackupStream`); the agent's HTTP API serves it to
  the receiver behind the API token (``GET /v1/backup``);
* the **receiver** (the fenced node) first saves its errant transactions (as the truncation does),
  extracts the stream with ``mbstream`` into a sibling of its data directory, prepares it
  (``mariadb-backup --prepare``), SIGKILLs its mysqld, moves the old data directory aside (the
  newest ``keep_old`` kept, older ones deleted once the rebuild succeeded), moves the new one in,
  starts mysqld and sets ``gtid_slave_pos`` to the backup's position
  (``mariadb_backup_binlog_info``); the agent's usual errant check then repoints it.

Nothing here decides whether a node may be rebuilt: that is the decision core's
(``dbfence.agent.rejoin``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.binlog_excerpt import save_errant
from dbfence.mysql.connection import Endpoint, query, query_one
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.gtid import GtidPosition, GtidState, describe_errant
from dbfence.mysql.repair import MysqldControl, binlog_files, kill_mysqld, start_mysqld
from dbfence.mysql.repair_errors import NothingErrant, RepairError

CHUNK = 1 << 20
#: The files mariadb-backup writes with the GTID position of the copy (older releases: xtrabackup_).
POSITION_FILES = ("mariadb_backup_binlog_info", "xtrabackup_binlog_info")
#: With --slave-info, a replica donor's applied position (right even without log_slave_updates).
REPLICA_POSITION_FILES = ("mariadb_backup_slave_info", "xtrabackup_slave_info")
_SLAVE_POS = re.compile(r"gtid_slave_pos\s*=\s*'([^']*)'")


@dataclass(frozen=True)
class Progress:
    """How far a stream has come: bytes so far, of about ``estimate`` (0: unknown)."""

    done: int
    estimate: int
    seconds: float
    complete: bool = False

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta(self) -> float | None:
        if self.complete:
            return 0.0
        if not self.estimate or self.rate <= 0 or self.done >= self.estimate:
            return None
        return (self.estimate - self.done) / self.rate

    def as_dict(self) -> dict[str, float | int | None]:
        eta = self.eta
        return {"bytes": self.done, "estimate_bytes": self.estimate, "seconds": round(self.seconds, 1),
                "bytes_per_second": round(self.rate), "eta_seconds": None if eta is None else round(eta, 1)}


class RateLimit:
    """Paces a byte stream to ``bytes_per_second`` (0: unlimited). An idle spell saves up at most
    ``burst`` seconds' worth, so a stall of the source is not followed by a full-speed burst."""

    def __init__(self, bytes_per_second: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, burst: float = 0.25) -> None:
        self.bytes_per_second = bytes_per_second
        self.clock = clock
        self.sleep = sleep
        self.burst = burst
        self._paid_until = clock()

    def pace(self, nbytes: int) -> None:
        """Account for ``nbytes`` about to be sent; sleep until the rate allows them."""
        if self.bytes_per_second <= 0:
            return
        now = self.clock()
        self._paid_until = max(self._paid_until, now - self.burst) + nbytes / self.bytes_per_second
        if self._paid_until > now:
            self.sleep(self._paid_until - now)


def datadir_estimate(datadir: Path, binlog_base: str = "") -> int:
    """About what a backup of ``datadir`` streams: its files, without binlogs and relay logs."""
    total = 0
    skip_prefix = os.path.basename(binlog_base) if binlog_base else None
    for root, _dirs, files in os.walk(datadir):
        for name in files:
            if ((skip_prefix and name.startswith(skip_prefix + ".")) or "relay-bin" in name
                    or name.startswith("ib_logfile")):  # the redo log: only its tail is copied
                continue
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def _client_file(endpoint: Endpoint, credentials: Credentials) -> Path:
    """A 0600 option file with the account, so that the password is not on a command line."""
    fd, name = tempfile.mkstemp(prefix="dbfence-backup-", suffix=".cnf")
    with os.fdopen(fd, "w") as out:
        lines = ["[client]", f"user={credentials.user}", f"password={credentials.password}"]
        if endpoint.unix_socket:
            lines.append(f"socket={endpoint.unix_socket}")
        else:
            lines += [f"host={endpoint.host}", f"port={endpoint.port}"]
        out.write("\n".join(lines) + "\n")
    return Path(name)


class BackupStream:
    """The donor's side: one ``mariadb-backup --backup --stream=mbstream`` run, read in paced chunks.

    Iterate :meth:`chunks`; a run that fails (the tool exits non-zero) raises RepairError at the
    end, so a server relaying it can cut the stream short instead of ending it cleanly.
    """

    #: One backup at a time per donor: two would double its I/O load.
    _busy = threading.Lock()

    def __init__(self, mysql: MysqlActions, bytes_per_second: int, tool: str = "mariadb-backup",
                 extra_args: Iterable[str] = ()) -> None:
        self.mysql = mysql
        self.limit = RateLimit(bytes_per_second)
        self.tool = tool
        self.extra_args = tuple(extra_args)
        with mysql.session() as conn:
            row = query_one(conn, "SELECT @@global.datadir AS datadir, @@global.log_bin_basename AS base")
        self.datadir = Path(str(row["datadir"]))
        self.estimate = datadir_estimate(self.datadir, str(row["base"] or ""))

    def chunks(self) -> Iterator[bytes]:
        if not BackupStream._busy.acquire(blocking=False):
            raise RepairError("a backup is already streaming from this donor")
        options = _client_file(self.mysql.endpoint, self.mysql.credentials)
        scratch = Path(tempfile.mkdtemp(prefix="dbfence-backup-"))
        try:
            argv = [self.tool, f"--defaults-extra-file={options}", "--backup", "--stream=mbstream",
                    "--slave-info", f"--datadir={self.datadir}", f"--target-dir={scratch}", *self.extra_args]
            with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
                assert proc.stdout is not None and proc.stderr is not None
                stderr: list[bytes] = []
                errors = proc.stderr
                drain = threading.Thread(target=lambda: stderr.append(errors.read()), daemon=True)
                drain.start()
                try:
                    while chunk := proc.stdout.read(CHUNK):
                        self.limit.pace(len(chunk))
                        yield chunk
                finally:
                    if proc.poll() is None:
                        proc.kill()  # the receiver went away: do not leave the copy running
                    code = proc.wait()
                    drain.join(5)
                if code != 0:
                    tail = b"".join(stderr).decode(errors="replace")[-800:]
                    raise RepairError(f"{self.tool} --backup exited {code}: {tail}")
        finally:
            options.unlink(missing_ok=True)
            shutil.rmtree(scratch, ignore_errors=True)
            BackupStream._busy.release()


def extract_stream(chunks: Iterable[bytes], into: Path, estimate: int,
                   on_progress: Callable[[Progress], None], every: float = 2.0,
                   tool: str = "mbstream") -> Progress:
    """The receiver's side: ``mbstream -x`` the donor's stream into the empty directory ``into``,
    reporting progress about every ``every`` seconds; raises RepairError if extraction fails."""
    into.mkdir(mode=0o700)
    started = time.monotonic()
    last = started
    done = 0
    with subprocess.Popen([tool, "-x", "-C", str(into)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdin is not None and proc.stderr is not None
        try:
            for chunk in chunks:
                proc.stdin.write(chunk)
                done += len(chunk)
                now = time.monotonic()
                if now - last >= every:
                    last = now
                    on_progress(Progress(done, estimate, now - started))
        except BrokenPipeError:
            pass  # mbstream died: its exit code says why
        finally:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace")
        code = proc.wait()
    if code != 0:
        raise RepairError(f"{tool} -x exited {code}: {err[-500:]}")
    final = Progress(done, estimate, time.monotonic() - started, complete=True)
    on_progress(final)
    return final


def prepare(target: Path, tool: str = "mariadb-backup", timeout: float = 3600.0) -> None:
    """Apply the redo log copied with the backup, so that the files are consistent."""
    try:
        done = subprocess.run([tool, "--prepare", f"--target-dir={target}"], capture_output=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RepairError(f"{tool} --prepare failed: {exc}") from None
    if done.returncode != 0:
        raise RepairError(f"{tool} --prepare exited {done.returncode}: "
                          f"{done.stderr.decode(errors='replace')[-500:]}")


def backup_position(target: Path) -> GtidPosition:
    """The GTID position the copy is consistent with: a replica donor's gtid_slave_pos, else the
    third field of the binlog info file (a primary donor)."""
    for name in REPLICA_POSITION_FILES:
        path = target / name
        if path.exists() and (found := _SLAVE_POS.search(path.read_text())) and found.group(1).strip():
            return GtidPosition.parse(found.group(1))
    for name in POSITION_FILES:
        path = target / name
        if path.exists():
            fields = path.read_text().split("\t")
            if len(fields) >= 3 and fields[2].strip():
                return GtidPosition.parse(fields[2].strip())
            raise RepairError(f"{path} names no GTID position: {path.read_text()!r}")
    raise RepairError(f"the backup in {target} has no binlog position file ({' or '.join(POSITION_FILES)}): "
                      "was the donor's binary log on?")


#: The donor's estimate covers the data files; what the copy adds (redo log tail, prepare's work
#: files) is put at a tenth of it, on top of the configured margin.
ESTIMATE_SLACK = 0.10


def room_problem(free: int, estimate: int, margin: int) -> str | None:
    """Why a copy of about ``estimate`` bytes must not start on a filesystem with ``free`` bytes
    left, keeping ``margin`` (None: room enough). A copy that fills the disk would fail half way
    and leave this host without space for its mysqld."""
    need = int(estimate * (1 + ESTIMATE_SLACK)) + margin
    if free >= need:
        return None
    return (f"not enough free space for the copy: {free >> 20} MiB free, {need >> 20} MiB needed "
            f"(the donor's data {estimate >> 20} MiB + {ESTIMATE_SLACK:.0%} + margin {margin >> 20} MiB, "
            "[rejoin] free_space_margin_mib); free space, then approve a rebuild again")


def old_datadirs(datadir: Path) -> list[Path]:
    """The data directories earlier rebuilds moved aside next to ``datadir``, oldest first."""
    return sorted(p for p in datadir.parent.glob(f"{datadir.name}.dbfence-old-*") if p.is_dir())


def prune_old_datadirs(datadir: Path, keep: int, spare: Path) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """Delete all but the newest ``keep`` moved-aside data directories; never one that holds
    ``spare`` (the saved errant transactions, should the state directory live in one). Returns
    what was deleted and what could not be (each with why): the rebuild succeeded either way."""
    doomed = old_datadirs(datadir)
    doomed = doomed[:max(0, len(doomed) - keep)]
    removed: list[Path] = []
    problems: list[str] = []
    for path in doomed:
        if spare.resolve().is_relative_to(path.resolve()):
            problems.append(f"{path}: kept, it holds {spare}")
            continue
        try:
            shutil.rmtree(path)
        except OSError as exc:
            problems.append(f"{path}: {exc}")
            continue
        removed.append(path)
    return tuple(removed), tuple(problems)


def swap_datadir(datadir: Path, new: Path, aside: Path) -> None:
    """Move ``datadir`` to ``aside`` (kept) and ``new`` into its place, owned like the old one."""
    owner = datadir.stat()
    os.rename(datadir, aside)
    try:
        os.rename(new, datadir)
    except OSError:
        os.rename(aside, datadir)  # put the old one back rather than leave no data directory
        raise
    os.chown(datadir, owner.st_uid, owner.st_gid)
    os.chmod(datadir, owner.st_mode & 0o7777)
    for root, dirs, files in os.walk(datadir):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), owner.st_uid, owner.st_gid)


@dataclass(frozen=True)
class RebuildResult:
    """What a rebuild did."""

    saved_file: Path
    errant_before: str
    old_datadir: Path
    position: str
    progress: Progress
    seconds: float
    pruned: tuple[Path, ...] = ()  # older moved-aside data directories deleted
    prune_problems: tuple[str, ...] = ()  # ones that could not be deleted, and why


def rebuild_from_stream(mysql: MysqlActions, control: MysqldControl, primary_state: Callable[[], GtidState],
                        fetch: Callable[[], tuple[int, Iterable[bytes]]], out: Path, header: str,
                        on_progress: Callable[[Progress], None], stamp: str,
                        backup_tool: str = "mariadb-backup",
                        mbstream_tool: str = "mbstream", margin: int = 1 << 30,
                        keep_old: int = 1) -> RebuildResult:
    """Rebuild the local mysqld from a donor's stream (``fetch`` opens it: estimate, chunks).

    Order matters: the errant transactions are saved and the new copy is complete and prepared
    before anything of the old node is touched; the old data directory is moved aside, never
    deleted (only older ones than the newest ``keep_old``, after success). The copy does not start
    without room for the donor's estimate plus ``margin`` bytes. Raises RepairError with what was
    left as it was.
    """
    started = time.monotonic()
    before = mysql.gtid_positions()
    ranges = before.history.errant_against(primary_state())
    with mysql.session() as conn:
        row = query_one(conn, "SELECT @@global.datadir AS datadir, @@global.log_bin_basename AS base")
    datadir = Path(str(row["datadir"])).resolve()
    base = str(row["base"] or "")
    if base and not Path(base).resolve().is_relative_to(datadir):
        raise RepairError(f"the binlogs ({base}) are outside the data directory {datadir}: moving the "
                          "data directory aside would leave the errant ones behind; not rebuilt")
    if not ranges:  # a stale request: never copy a node that is already clean
        raise NothingErrant("nothing errant against the primary any more")
    save_errant(control.binlog_tool, binlog_files(mysql), ranges, out, header)
    staging = datadir.with_name(f"{datadir.name}.dbfence-rebuild-{stamp}")
    aside = datadir.with_name(f"{datadir.name}.dbfence-old-{stamp}")
    try:
        estimate, chunks = fetch()
        problem = room_problem(shutil.disk_usage(datadir.parent).free, estimate, margin)
        if problem is not None:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # the donor stops copying when the connection goes
            raise RepairError(problem)
        progress = extract_stream(chunks, staging, estimate, on_progress, tool=mbstream_tool)
        prepare(staging, backup_tool)
        position = backup_position(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    kill_mysqld(control.pid_file)
    swap_datadir(datadir, staging, aside)
    start_mysqld(control, mysql)
    with mysql.session() as conn:
        # The copy holds the donor's replication settings; this node follows whoever the agent
        # repoints it to, from the copy's position.
        query(conn, "STOP SLAVE")
        query(conn, "RESET SLAVE ALL")
        query(conn, "SET GLOBAL gtid_slave_pos = %s", (str(position),))
    left = mysql.gtid_positions().history.errant_against(primary_state())
    if left:
        raise RepairError(f"still errant after the rebuild: {describe_errant(left)} (old data in {aside})")
    pruned, prune_problems = prune_old_datadirs(datadir, keep_old, out)
    return RebuildResult(saved_file=out, errant_before=describe_errant(ranges), old_datadir=aside,
                         position=str(position), progress=progress, seconds=time.monotonic() - started,
                         pruned=pruned, prune_problems=prune_problems)

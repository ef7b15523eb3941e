"""The binlog state of the local mysqld while it stays down after a crash, read from its files.

Why: soak seed 443. The primary's mysqld crashed and its crash recovery failed for good; the
other nodes, both fenced, waited for its binlog state for ever (``takeover_unproven: binlog state
of db1 unknown``). While mysqld is down after a crash of its own and has not run since (the
restarter says so: :attr:`MysqldRestarter.down_after_crash`), this reads the state its binlog files
hold (:func:`dbfence.mysql.binlog_on_disk.binlog_state_on_disk`), merged with the position and
state last read from it while it ran (a rebuild's or the token discard's ``SET gtid_slave_pos``
is in no binlog file), and hands it to the core (``RepairView.binlog_state_on_disk``), which
publishes it in the member record as the fence-killed case does. A crash adds nothing and
recovery only removes: an upper bound of what the node holds.

Invariants: the state is dropped the moment mysqld may run again (the restarter starts it, or
it runs), and a read that finishes after that is thrown away; one read per crash, in a thread
(``mariadb-binlog`` on a large file takes a second); a read that fails is retried with the
restarter's backoff, logged once per error; never a state guessed low (the reader refuses).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from dbfence.agent.gtid import BinlogState, GtidParseError, GtidPosition
from dbfence.agent.restart_rule import next_delay
from dbfence.mysql.binlog_on_disk import DiskBinlogState, binlog_state_on_disk
from dbfence.mysql.repair_errors import RepairError

log = logging.getLogger("dbfence.agent")

Reader = Callable[[str, str, str], DiskBinlogState]


class DiskStateReader:
    """Reads, once per crash, what the binlog files of the down mysqld hold."""

    def __init__(self, *, node: str, tool: str, location: Callable[[], tuple[str, str] | None],
                 clock: Callable[[], float] = time.monotonic, read: Reader = binlog_state_on_disk) -> None:
        self.node = node
        self.tool = tool
        self.location = location  # (log_bin_basename, datadir) remembered from a run of mysqld
        self.clock = clock
        self.read = read
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._generation = 0  # bumped whenever mysqld may run: a read of an older one is void
        self._state: BinlogState | None = None
        self._server_id: int | None = None
        self._live: tuple[str, ...] = ()  # the position and state last read while mysqld ran
        self._failed = 0
        self._next_at: float | None = None
        self._error = ""

    def tick(self, *, down: bool, live: tuple[str, ...] = ()) -> None:
        """One round. ``down``: mysqld is down after a crash of its own and nothing starts it
        now; ``live``: what was read from it this round (GTID lists; empty when not read)."""
        with self._lock:
            if not down:
                if self._state is not None:
                    log.info(json.dumps({"event": "binlog_state_on_disk_dropped", "node": self.node}))
                self._generation += 1
                self._state = self._server_id = self._next_at = None
                self._failed, self._error = 0, ""
                if any(live):
                    self._live = live
                return
            busy = self._worker is not None and self._worker.is_alive()
            due = self._next_at is None or self.clock() >= self._next_at
            if self._state is not None or busy or not due:
                return
            generation = self._generation
            self._worker = threading.Thread(target=self._read, args=(generation,), name="binlog-on-disk",
                                            daemon=True)
            self._worker.start()

    def _read(self, generation: int) -> None:
        location = self.location()
        try:
            if location is None:
                raise RepairError("the binlog's location was never read from a running mysqld")
            disk = self.read(self.tool, location[0], location[1])
            live = [gtid for text in self._live for gtid in GtidPosition.parse_gtids(text)]
            state = BinlogState.merged(BinlogState.parse(str(disk.state)).gtids, live)
        except (RepairError, GtidParseError) as exc:
            with self._lock:
                first = str(exc) != self._error
                self._failed += 1
                self._error = str(exc)
                delay = next_delay(self._failed)
                self._next_at = self.clock() + delay
            if first:
                log.warning(json.dumps({"event": "binlog_state_on_disk_unread", "node": self.node,
                                        "failed_reads": self._failed, "next_in_s": delay, "error": str(exc)}))
            return
        with self._lock:
            if generation != self._generation:
                return  # mysqld may have run since: what the files held then says nothing now
            self._state, self._server_id = state, disk.server_id
        log.warning(json.dumps({"event": "binlog_state_on_disk", "node": self.node, "file": str(disk.file),
                                "server_id": disk.server_id, "gtid_binlog_state": str(state)}))

    def view(self) -> tuple[BinlogState | None, int | None]:
        """The state the files hold and the server id that wrote them (None, None: not known)."""
        with self._lock:
            return self._state, self._server_id

    def join(self, timeout: float) -> None:
        """Wait for a read under way (tests)."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)

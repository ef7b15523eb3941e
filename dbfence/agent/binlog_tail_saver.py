"""Where the local mysqld keeps its binlog, remembered while it runs, for a copy while it is down.

Why: a fenced former primary whose mysqld crashed on its own is started again only after the
binlog files its crash recovery reads are copied (:mod:`dbfence.agent.restart_rule`). mysqld is
down then, so their location must have been read before: from each run of mysqld, once (the
restarter asks when it sees a new pid), kept in ``<state_dir>/binlog-location.json`` so that an
agent restarted meanwhile still knows it. The error log's path is kept with it: when a start
fails, the restarter names the cause from there (:mod:`dbfence.mysql.error_log`).

Invariants: a read that fails leaves the last location known; the copy is whole or absent
(:func:`dbfence.mysql.binlog_tail.copy_binlog_tail`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from dbfence.durable import write_json_atomically
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.binlog_tail import LOCATION_QUERY, copy_binlog_tail
from dbfence.mysql.connection import query_one
from dbfence.mysql.error_log import error_log_path, start_failure
from dbfence.mysql.errors import MysqlAdapterError
from dbfence.mysql.repair_errors import RepairError

log = logging.getLogger("dbfence.agent")

LOCATION_FILE = "binlog-location.json"


class BinlogTailSaver:
    """Remembers the binlog's location; copies its tail into the state directory on request."""

    def __init__(self, *, state_dir: Path, node: str, mysql: MysqlActions, tool: str,
                 wall: Callable[[], float] = time.time) -> None:
        self.state_dir = state_dir
        self.node = node
        self.mysql = mysql
        self.tool = tool
        self.wall = wall
        self.location = self._load()  # (log_bin_basename, datadir), or None: never read
        self.error_log = self._load_error_log()  # None: never read, or mysqld logs to stderr

    def _load(self) -> tuple[str, str] | None:
        try:
            data = json.loads((self.state_dir / LOCATION_FILE).read_text())
            return str(data["log_bin_basename"]), str(data["datadir"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _load_error_log(self) -> Path | None:
        try:
            path = json.loads((self.state_dir / LOCATION_FILE).read_text()).get("log_error") or ""
        except (OSError, ValueError, AttributeError):
            return None
        return Path(path) if isinstance(path, str) and path else None

    def start_failure(self) -> str | None:
        """Why mysqld's last start failed, from its error log (None: unknown)."""
        return start_failure(self.error_log)

    def remember(self) -> None:
        """Read the location from the running mysqld and keep it (a failed read changes nothing)."""
        try:
            with self.mysql.session(read_timeout_s=2.0) as conn:
                row = query_one(conn, LOCATION_QUERY)
        except MysqlAdapterError as exc:
            log.info(json.dumps({"event": "binlog_location_unread", "node": self.node, "error": str(exc)}))
            return
        location = (str(row["base"] or ""), str(row["datadir"] or ""))
        error_log = error_log_path(str(row["log_error"] or ""), location[1])
        if (location == self.location and error_log == self.error_log) or not location[0]:
            return
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_json_atomically(self.state_dir / LOCATION_FILE,
                              {"log_bin_basename": location[0], "datadir": location[1],
                               "log_error": "" if error_log is None else str(error_log)})
        self.location, self.error_log = location, error_log

    def save(self) -> str:
        """Copy the binlog files crash recovery reads; returns the copy's directory. Raises
        RepairError (RepairDeferred: no room) when it cannot."""
        if self.location is None:
            raise RepairError("the binlog's location was never read from a running mysqld: copy its "
                              "files by hand, then start mysqld")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.wall()))
        out = self.state_dir / f"binlog-tail-{self.node}-{stamp}"
        copies = copy_binlog_tail(self.tool, self.location[0], self.location[1], out)
        log.warning(json.dumps({"event": "binlog_tail_saved", "node": self.node, "directory": str(out),
                                "files": [c.name for c in copies]}))
        return str(out)

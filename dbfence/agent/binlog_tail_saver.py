"""Where the local mysqld keeps its binlog, remembered while it runs, for a copy while it is down.

Why: a fenced former primary whose mysqld crashed on its own is started again only after the
binlog files its crash recovery reads are copied (:mod:`dbfence.agent.restart_rule`). mysqld is
down then, so their location must have been read before: from each run of mysqld, once (the
restarter asks when it sees a new pid), kept in ``<state_dir>/binlog-location.json`` so that an
agent restarted meanwhile still knows it.

Invariants: a read that fails leaves the last location known; the copy is whole or absent
(:func:`dbfence.mysql.binlog_tail.copy_binlog_tail`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.binlog_tail import copy_binlog_tail
from dbfence.mysql.connection import query_one
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

    def _load(self) -> tuple[str, str] | None:
        try:
            data = json.loads((self.state_dir / LOCATION_FILE).read_text())
            return str(data["log_bin_basename"]), str(data["datadir"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def remember(self) -> None:
        """Read the location from the running mysqld and keep it (a failed read changes nothing)."""
        try:
            with self.mysql.session(read_timeout_s=2.0) as conn:
                row = query_one(conn, "SELECT @@global.log_bin_basename AS base, @@global.datadir AS datadir")
        except MysqlAdapterError as exc:
            log.info(json.dumps({"event": "binlog_location_unread", "node": self.node, "error": str(exc)}))
            return
        location = (str(row["base"] or ""), str(row["datadir"] or ""))
        if location == self.location or not location[0]:
            return
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = self.state_dir / f".{LOCATION_FILE}.partial"
        partial.write_text(json.dumps({"log_bin_basename": location[0], "datadir": location[1]}))
        os.replace(partial, self.state_dir / LOCATION_FILE)
        self.location = location

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

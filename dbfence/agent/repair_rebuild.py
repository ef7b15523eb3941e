"""The rebuild half of the agent's ``[rejoin]`` repair: an operator's approval, the copy from a
donor, and what status shows of it.

Why a module of its own: :class:`~dbfence.agent.repair_keeper.RepairKeeper` owns the evidence and
the truncation; the rebuild shares only its bookkeeping (the worker thread, what was saved, why it
gave up), so it is mixed in from here (:class:`RebuildRunner`) and the keeper stays one object for
the loop, the executor and the HTTP API.

Invariants: one worker at a time (truncation or rebuild, under the keeper's lock); an approval is
spent when the rebuild starts (one approval, one attempt), when a fence begins or the node serves
again (it was for another fence), and expires after ``approval_ttl`` (:mod:`rebuild_approval`); a
failure is reported, never retried by itself.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dbfence.agent.actions import RebuildNode
from dbfence.agent.rebuild_approval import APPROVAL_FILE, Approval, format_time, read_approval, write_approval
from dbfence.discovery.backup_stream import fetch_backup
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.errors import MysqlAdapterError
from dbfence.mysql.gtid import GtidState
from dbfence.mysql.rebuild import Progress, RebuildResult, rebuild_from_stream
from dbfence.mysql.repair import MysqldControl
from dbfence.mysql.repair_errors import NothingErrant, RepairError

log = logging.getLogger("dbfence.agent")


class RebuildRunner:
    """The rebuild, mixed into RepairKeeper, which sets every attribute declared here."""

    mode: str
    node: str
    state_dir: Path
    mysql: MysqlActions
    control: MysqldControl
    wall: Callable[[], float]
    approval_ttl: float
    on_done: Callable[[str, str], None]
    api_token: str | None
    api_tls: ssl.SSLContext | None
    mutual_tls: bool
    backup_tool: str
    mbstream_tool: str
    free_space_margin: int
    keep_old_datadirs: int
    saved_file: str
    gave_up: str
    gave_up_on: str
    progress: Progress | None
    last_rebuild: RebuildResult | None
    _lock: threading.Lock
    _worker: threading.Thread | None
    _killed: bool

    def _approved(self) -> bool:
        return self.mode == "rebuild" and self._approval() is not None

    def _approval(self) -> Approval | None:
        """The approval that counts now; an expired one is removed here, saying so."""
        approval = read_approval(self.state_dir)
        if approval is None or not approval.expired(self.approval_ttl, self.wall()):
            return approval
        self._spend_approval(f"expired: given more than {self.approval_ttl:g} s ago")
        return None

    def _spend_approval(self, why: str) -> None:
        """Remove the approval file, if any, and log why (never over an OSError: the loop's)."""
        approval = read_approval(self.state_dir)
        if approval is None:
            return
        try:
            (self.state_dir / APPROVAL_FILE).unlink(missing_ok=True)
        except OSError as exc:
            log.warning(json.dumps({"event": "rebuild_approval_kept", "node": self.node, "why": why,
                                    "error": str(exc)}))
            return
        log.warning(json.dumps({"event": "rebuild_approval_removed", "node": self.node, "why": why,
                                "by": approval.by, "approved_at": format_time(approval.at)}))

    def _approval_status(self) -> dict[str, Any] | None:
        """Who approved a rebuild and when, and when that approval expires (status)."""
        approval = self._approval() if self.mode == "rebuild" else None
        if approval is None:
            return None
        expires = approval.expires_at(self.approval_ttl)
        return {"by": approval.by, "approved_at": format_time(approval.at),
                "expires_at": None if expires is None else format_time(expires)}

    def approve_rebuild(self, by: str) -> str:
        """An operator approves one rebuild (``dbfence rejoin approve``): the same file an operator
        may create by hand, spent when the rebuild starts. Raises ValueError when this node's
        ``[rejoin] mode`` never rebuilds (the approval would wait there unseen)."""
        if self.mode != "rebuild":
            raise ValueError(f"[rejoin] mode is {self.mode!r} on {self.node}: it never rebuilds, "
                             "so an approval would change nothing")
        now = self.wall()
        path = write_approval(self.state_dir, by, now)
        expires = Approval(by, now).expires_at(self.approval_ttl)
        until = "" if expires is None else f", valid until {format_time(expires)}"
        log.warning(json.dumps({"event": "rebuild_approved", "node": self.node, "by": by, "file": str(path),
                                "expires_at": None if expires is None else format_time(expires)}))
        return (f"one rebuild of {self.node} approved ({path}{until}); it starts when a donor can serve, "
                "unless the node serves again first")

    def _rebuild_status(self) -> dict[str, Any] | None:
        progress, done = self.progress, self.last_rebuild
        if progress is None and done is None:
            return None
        return {"progress": None if progress is None else progress.as_dict(),
                "last": None if done is None else {
                    "old_datadir": str(done.old_datadir), "position": done.position,
                    "removed": done.errant_before, "seconds": round(done.seconds, 1)}}

    def start_rebuild(self, action: RebuildNode, donor_api: str,
                      primary_state: Callable[[], GtidState]) -> None:
        """Start the rebuild from ``donor_api`` the core asked for, unless a repair is running.
        An operator's approval is spent here: one approval, one attempt."""
        with self._lock:
            if self._worker is not None and self._worker.is_alive():
                return
            if not self.api_token and not self.mutual_tls:
                self.gave_up = "rebuild needs http.token_file or mutual TLS (to authenticate to the donor)"
                self.gave_up_on = "rebuild"
                return
            (self.state_dir / APPROVAL_FILE).unlink(missing_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.wall()))
            out = self.state_dir / f"errant-{self.node}-{stamp}.sql"
            self.progress = None
            self._worker = threading.Thread(target=self._rebuild, args=(action, donor_api, primary_state, out,
                                                                        stamp), name="rebuild", daemon=True)
            self._worker.start()

    def _rebuild(self, action: RebuildNode, donor_api: str, primary_state: Callable[[], GtidState], out: Path,
                 stamp: str) -> None:
        token, tls = self.api_token, self.api_tls
        header = (f"-- dbfence: errant transactions of {self.node}, thrown away by a rebuild from "
                  f"{action.donor}\n-- GTIDs: {', '.join(action.gtids)}\n-- reason: {action.reason.value}\n"
                  f"-- to apply them anyway (after review): mariadb < {out.name}\n")
        log.warning(json.dumps({"event": "rebuild_started", "node": self.node, "donor": action.donor,
                                "url": donor_api, "gtids": list(action.gtids),
                                "reason": action.reason.value}))
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            result = rebuild_from_stream(self.mysql, self.control, primary_state,
                                         lambda: fetch_backup(donor_api, token, tls=tls), out, header,
                                         self._on_progress, stamp, backup_tool=self.backup_tool,
                                         mbstream_tool=self.mbstream_tool, margin=self.free_space_margin,
                                         keep_old=self.keep_old_datadirs)
        except NothingErrant as exc:
            self._skipped(exc)
            return
        except (RepairError, MysqlAdapterError, OSError) as exc:
            saved = str(out) if out.exists() else ""
            with self._lock:
                self.saved_file = saved or self.saved_file
                self.gave_up, self.gave_up_on = f"rebuild failed: {exc}", "rebuild"
            log.warning(json.dumps({"event": "rebuild_done", "node": self.node, "ok": False,
                                    "error": str(exc), "file": saved}))
            self.on_done("repair_failed", f"rebuild from {action.donor} failed: {exc}"
                                          + (f"; saved to {saved}" if saved else ""))
            return
        saved = str(result.saved_file)
        with self._lock:
            self.saved_file = saved
            self.gave_up = self.gave_up_on = ""
            self._killed = False
            self.last_rebuild = result
        log.info(json.dumps({"event": "rebuild_done", "node": self.node, "ok": True, "donor": action.donor,
                             "removed": result.errant_before, "file": saved,
                             "old_datadir": str(result.old_datadir),
                             "position": result.position, "seconds": round(result.seconds, 1),
                             "deleted_old_datadirs": [str(p) for p in result.pruned],
                             **result.progress.as_dict()}))
        if result.prune_problems:
            log.warning(json.dumps({"event": "old_datadirs_kept", "node": self.node,
                                    "problems": list(result.prune_problems)}))
        self.on_done("repair", f"rebuilt from {action.donor} in {result.seconds:.1f} s "
                               f"({result.progress.done} bytes), old data in {result.old_datadir}; "
                               f"removed {result.errant_before or 'nothing'}"
                               + (f"; saved to {saved}" if saved else ""))

    def _skipped(self, exc: NothingErrant) -> None:
        """A request from facts read before the last repair finished: nothing done, nothing failed."""
        log.info(json.dumps({"event": "repair_skipped", "node": self.node, "why": str(exc)}))

    def _on_progress(self, progress: Progress) -> None:
        self.progress = progress
        log.info(json.dumps({"event": "rebuild_progress", "node": self.node, **progress.as_dict()}))

"""Starts a replica's or a fenced node's mysqld that crashed on its own, per
:mod:`dbfence.agent.restart_rule`.

The start command runs in a thread of its own (crash recovery can take minutes), as does the copy
of a fenced node's binlog tail that comes first (``save_tail``, with the same backoff while it
fails); the loop calls :meth:`MysqldRestarter.tick` once a round and reads
:meth:`MysqldRestarter.status`. Each new run of mysqld is asked once where its binlog is
(``remember``), so that the copy can find it while mysqld is down.

A start that fails is tried again with the backoff for as long as mysqld has not run since, even
though it leaves no pid file (the start removed the stale one, and a mysqld aborting in its
recovery writes none: that is no operator's stop, seed 443), and its cause is read from mysqld's
error log (``start_failure``): the log event, status and the member record's reasons
(:meth:`MysqldRestarter.down_reason`) name it. The failure is kept in ``failed_marker`` (the
state directory) until mysqld runs: an agent restarted meanwhile does not take the missing pid file
for an operator's stop either.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dbfence.agent.restart_rule import SAVE_TAIL_FIRST, CrashView, next_delay, restart_hold, save_tail_first
from dbfence.agent.state import Role
from dbfence.durable import write_json_atomically
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.repair import MysqldControl, mysqld_running, start_mysqld

log = logging.getLogger("dbfence.agent")

#: In the state directory while the agent's starts of mysqld fail (until it runs again).
FAILED_MARKER = "mysqld-start-failed.json"


class MysqldRestarter:
    """Starts the local mysqld after a crash while this node is a replica, with backoff."""

    def __init__(self, *, mode: str, node: str, control: MysqldControl, mysql: MysqlActions,
                 clock: Callable[[], float] = time.monotonic,
                 start: Callable[[MysqldControl, MysqlActions], None] = start_mysqld,
                 save_tail: Callable[[], str] | None = None,
                 remember: Callable[[], None] | None = None,
                 start_failure: Callable[[], str | None] | None = None,
                 failed_marker: Path | None = None) -> None:
        self.mode = mode
        self.node = node
        self.control = control
        self.mysql = mysql
        self.clock = clock
        self.start = start
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._down_since: float | None = None  # when this crash was first seen
        self._failed = 0  # failed starts since
        self._next_at: float | None = None
        self._last_error = ""
        self._starts = 0  # successful starts, for status
        self._hold = ""
        self.save_tail = save_tail  # copies the binlog files recovery reads; returns where
        self.remember = remember  # reads where the running mysqld keeps its binlog
        self._tail_saved = ""  # where this crash's binlog tail was copied ('' : not yet)
        self._failed_saves = 0
        self._next_save_at: float | None = None
        self._save_error = ""
        self._last_copy = ""  # the last copy taken (kept for status after the start)
        self._remembered_pid = ""
        self.start_failure = start_failure  # the cause of a failed start, from mysqld's error log
        self._cause = ""  # the last failed start's cause ('' : unknown, or none failed)
        self._crash_down = False  # the last tick saw mysqld down after a crash (not the fence's kill)
        self._start_worker: threading.Thread | None = None
        self.failed_marker = failed_marker  # kept while starts fail, for a restarted agent
        self._load_marker()

    def tick(self, role: Role, *, killed_by_fence: bool, repair_running: bool,
             former_primary: bool = False) -> None:
        """One round: start mysqld now if the rule says so and the backoff allows."""
        if self.mode == "manual":
            return  # systemd's Restart= does it; not even the pid file is read
        with self._lock:
            if self._worker is not None and self._worker.is_alive():
                return
        pid_file = self.control.pid_file
        view = CrashView(mode=self.mode, role=role, running=mysqld_running(pid_file),
                         pid_file_left=pid_file.exists(), killed_by_fence=killed_by_fence,
                         repair_running=repair_running,
                         pid_file_readable=not pid_file.exists() or os.access(pid_file, os.R_OK),
                         tail_saved=bool(self._tail_saved), former_primary=former_primary,
                         start_failed=self._failed > 0)
        hold = restart_hold(view)
        now = self.clock()
        with self._lock:
            # Down after a crash of its own or a failed start, and nothing may start it meanwhile:
            # its binlog files then bound what it holds (down_after_crash).
            self._crash_down = (not view.running and view.pid_file_readable and not killed_by_fence
                                and not repair_running and (view.pid_file_left or view.start_failed))
            if view.running:
                if self._failed:
                    self._write_marker(None)
                self._down_since = self._next_at = self._next_save_at = None
                self._failed, self._hold, self._failed_saves, self._tail_saved = 0, "", 0, ""
                self._cause = ""
                self._remember_once()
                return
            if save_tail_first(view) and self.save_tail is not None:
                failed = f"; copy failed: {self._save_error}" if self._save_error else ""
                self._hold_now(SAVE_TAIL_FIRST + failed)
                if self._next_save_at is None or now >= self._next_save_at:
                    self._worker = threading.Thread(target=self._save, name="binlog-tail-copy", daemon=True)
                    self._worker.start()
                return
            if hold is not None:
                self._hold_now(hold)  # the backoff schedule stays: a hold is no successful start
                return
            self._hold = ""
            if self._down_since is None:
                self._down_since = now
                log.warning(json.dumps({"event": "mysqld_crashed", "node": self.node, "role": role.value,
                                        "start_in_s": next_delay(0)}))
            if self._next_at is None:
                self._next_at = now + next_delay(self._failed)
            if now < self._next_at:
                return
            self._worker = self._start_worker = threading.Thread(target=self._start, name="mysqld-restart",
                                                                 daemon=True)
            self._worker.start()

    def _hold_now(self, hold: str) -> None:
        if hold != self._hold:  # logged once per reason
            log.warning(json.dumps({"event": "mysqld_down", "node": self.node, "restart": False,
                                    "why": hold}))
        self._hold = hold

    def _remember_once(self) -> None:
        """Ask each new run of mysqld once where its binlog is (in a thread: it may hang)."""
        pid = self._pid()
        if self.remember is None or not pid or pid == self._remembered_pid:
            return
        self._remembered_pid = pid
        threading.Thread(target=self.remember, name="binlog-location", daemon=True).start()

    def _pid(self) -> str:
        try:
            return self.control.pid_file.read_text().strip()
        except OSError:
            return ""

    def _save(self) -> None:
        assert self.save_tail is not None
        try:
            saved = self.save_tail()
        except Exception as exc:  # any failure backs off, as a failed start does
            with self._lock:
                first = str(exc) != self._save_error
                self._failed_saves += 1
                self._save_error = str(exc)
                self._hold = f"{SAVE_TAIL_FIRST}; copy failed: {exc}"  # status says why at once
                delay = next_delay(self._failed_saves)
                self._next_save_at = self.clock() + delay
            if first:
                log.warning(json.dumps({"event": "binlog_tail_copy_failed", "node": self.node,
                                        "failed_copies": self._failed_saves, "next_in_s": delay,
                                        "error": str(exc)}))
            return
        with self._lock:
            self._tail_saved = self._last_copy = saved
            self._save_error, self._next_save_at = "", None

    def _start(self) -> None:
        started = self.clock()
        try:
            self.start(self.control, self.mysql)
        except Exception as exc:
            cause = self._read_cause()
            # Any failure, not only RepairError/MysqlAdapterError/OSError: one of another type
            # ended this thread before it set the next start, so every round started mysqld
            # again, without backoff and without a word in status.
            with self._lock:
                first = str(exc) != self._last_error or cause != self._cause
                self._failed += 1
                self._last_error, self._cause = str(exc), cause
                delay = next_delay(self._failed)
                self._next_at = self.clock() + delay
                failed = self._failed
            self._write_marker({"failed_starts": failed, "cause": cause, "error": str(exc)[:500]})
            if first:  # the same failure again is only counted (status: failed_starts)
                log.warning(json.dumps({"event": "mysqld_restart_failed", "node": self.node,
                                        "failed_starts": self._failed, "next_in_s": delay,
                                        "cause": cause or None, "error": str(exc)}))
            return
        with self._lock:
            down_for = started - (self._down_since or started)
            self._starts += 1
            self._down_since = self._next_at = None
            self._failed, self._last_error, self._cause = 0, "", ""
            self._crash_down = False  # it runs: before the next tick says so too
        self._write_marker(None)
        log.warning(json.dumps({"event": "mysqld_restarted", "node": self.node,
                                "down_seconds": round(down_for + self.clock() - started, 1),
                                "start_seconds": round(self.clock() - started, 1)}))

    def _load_marker(self) -> None:
        """A failed start kept by an earlier run of the agent (mysqld has not run since)."""
        if self.failed_marker is None:
            return
        try:
            kept = json.loads(self.failed_marker.read_text())
            self._failed, self._cause = max(1, int(kept["failed_starts"])), str(kept.get("cause") or "")
            self._last_error = str(kept.get("error") or "")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Unreadable: counted as a failed start (the agent wrote it; an operator's stop writes none).
            self._failed = 1
            log.warning(json.dumps({"event": "mysqld_start_failed_marker_unread", "node": self.node,
                                    "file": str(self.failed_marker), "error": str(exc)}))

    def _write_marker(self, content: dict[str, Any] | None) -> None:
        """Keep (or, with None, drop) the failed start for a restarted agent; best effort."""
        if self.failed_marker is None:
            return
        try:
            if content is None:
                self.failed_marker.unlink(missing_ok=True)
                return
            write_json_atomically(self.failed_marker, content)
        except OSError as exc:
            log.warning(json.dumps({"event": "mysqld_start_failed_marker_unwritten", "node": self.node,
                                    "file": str(self.failed_marker), "error": str(exc)}))

    def _read_cause(self) -> str:
        if self.start_failure is None:
            return ""
        try:
            return self.start_failure() or ""
        except Exception:  # a cause unread is no reason to stop retrying
            return ""

    @property
    def down_after_crash(self) -> bool:
        """mysqld is down after a crash of its own (or a failed start), has not run since, and no
        start of the agent's is under way ([rejoin] truncate or rebuild: manual says False, as
        systemd may start it any moment): what its binlog files hold bounds what it holds."""
        with self._lock:
            starting = self._start_worker is not None and self._start_worker.is_alive()
            return self._crash_down and not starting

    def down_reason(self) -> str | None:
        """Why mysqld is down though the agent starts it (its member record's reasons), or None."""
        with self._lock:
            if not self._failed:
                return None
            return (f"mysqld cannot start ({self._failed} failed start(s), retried with backoff): "
                    f"{self._cause or self._last_error[:300]}")

    def join(self, timeout: float) -> None:
        """Wait for a start under way (tests; the agent's stop does not wait for it)."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)

    @property
    def starting(self) -> bool:
        with self._lock:
            return self._worker is not None and self._worker.is_alive()

    def status(self) -> dict[str, Any]:
        with self._lock:
            now = self.clock()
            next_in = None if self._next_at is None else round(max(0.0, self._next_at - now), 1)
            return {"held": self._hold or None,
                    "starting": self._worker is not None and self._worker.is_alive(),
                    "down_seconds": None if self._down_since is None else round(now - self._down_since, 1),
                    "failed_starts": self._failed, "last_error": self._last_error or None,
                    "cause": self._cause or None,
                    "next_start_in_s": next_in, "restarts": self._starts,
                    "binlog_tail_saved": self._last_copy or None, "failed_copies": self._failed_saves}

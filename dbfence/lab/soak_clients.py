"""The soak's clients: a reader on a pool of sticky connections through discovery and the gates,
and a monitor of every agent's /status (the nemesis's targets and its promotion trigger)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pymysql

from dbfence.discovery import NoPrimary
from dbfence.lab.cluster import LabCluster
from dbfence.lab.history import Outcome, Read
from dbfence.lab.workload import DiscoveryWriter, discover

READ_WINDOW = 10.0  # a read covers the writes of (at least) the last this many seconds


@dataclass
class PooledReader:
    """Reads through discovery and the gate on a small pool of sticky connections, as an
    application's pool keeps them: a connection is dropped only when it fails. Each read asks
    for the ids from a low mark that covers the writer's last ``READ_WINDOW`` seconds."""

    lab: LabCluster
    writer: DiscoveryWriter
    table: str
    pool_size: int = 2
    timeout: float = 2.0
    pause: float = 0.1
    reads: list[Read] = field(default_factory=list)
    failed: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="soak-reader", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)

    def low_mark(self, now: float) -> int | None:
        """The smallest id among the attempts that ended in the window (at least the last
        acknowledged one), or None before any acknowledgement."""
        attempts = self.writer.attempts
        low: int | None = None
        for index in range(len(attempts) - 1, -1, -1):
            attempt = attempts[index]
            if attempt.end < now - READ_WINDOW and low is not None:
                break
            if attempt.outcome is Outcome.ACKNOWLEDGED or low is not None:
                low = attempt.id if low is None else min(low, attempt.id)
        return low

    def run(self) -> None:
        app = self.lab.accounts["app"]
        node_of_gate = {a.address: a.name for a in self.lab.agents}
        pool: list[tuple[Any, str]] = []
        turn = 0
        while not self.stop.wait(self.pause):
            low = self.low_mark(time.time())
            if low is None:
                continue
            turn += 1
            conn, gate = None, ""
            try:
                if len(pool) < self.pool_size:
                    host, port = discover(self.lab)
                    conn = pymysql.connect(host=host, port=port, user=app.user, password=app.password,
                                           autocommit=True, connect_timeout=self.timeout,
                                           read_timeout=self.timeout, write_timeout=self.timeout,
                                           ssl_disabled=True)
                    pool.append((conn, host))
                conn, gate = pool[turn % len(pool)]
                start = time.time()
                with conn.cursor() as cur:
                    cur.execute(f"SELECT id FROM {self.table} WHERE id >= %s", (low,))
                    ids = frozenset(int(row[0]) for row in cur.fetchall())
                self.reads.append(Read(start, time.time(), node_of_gate.get(gate, gate), low, ids))
            except (NoPrimary, pymysql.MySQLError, OSError):
                self.failed += 1
                if conn is not None:
                    pool = [(c, g) for c, g in pool if c is not conn]
                    with contextlib.suppress(Exception):
                        conn.close()
        for conn, _ in pool:
            with contextlib.suppress(Exception):
                conn.close()


@dataclass
class Monitor:
    """Polls every agent's /status: the latest view of each node, and when nodes were first
    seen promoting (for the nemesis's promotion trigger)."""

    lab: LabCluster
    interval: float = 0.2
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    promotions: list[tuple[float, str]] = field(default_factory=list)  # (wall, node)
    stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="soak-monitor", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            for agent in self.lab.agents:
                status = self.lab.agent_status(agent.name, timeout=0.5)
                if promoted(self.latest.get(agent.name, {}), status):
                    self.promotions.append((time.time(), agent.name))
                self.latest[agent.name] = status

    def target(self, fallback: str) -> str:
        """The node to strike: the primary, else a promoting node, else ``fallback``."""
        return strike_target(dict(self.latest), fallback)

    def promotion_after(self, wall: float) -> tuple[float, str] | None:
        """(when, which node) of the first promotion seen after ``wall``."""
        return next(((at, node) for at, node in list(self.promotions) if at > wall), None)


_TAKING_OVER = ("promoting", "primary")


def promoted(before: Mapping[str, Any], now: Mapping[str, Any]) -> bool:
    """A node seen taking over: it answered before in another role. A frozen agent that answers
    again with the report it published before its freeze (still "primary") did not."""
    return bool(before) and before.get("role") not in _TAKING_OVER and now.get("role") in _TAKING_OVER


def strike_target(latest: Mapping[str, Mapping[str, Any]], fallback: str) -> str:
    """The primary, else a promoting node; of several (a thawed former primary's stale report
    among them), the one holding the newest lease token."""
    def token(status: Mapping[str, Any]) -> int:
        value = (status.get("lease") or {}).get("token")
        return value if isinstance(value, int) else -1
    for wanted in _TAKING_OVER[::-1]:
        claimants = [(token(status), name) for name, status in latest.items() if status.get("role") == wanted]
        if claimants:
            return max(claimants)[1]
    return fallback

"""Connection floods for the fault matrix: bare TCP connections that never log in, and a watch on
what mysqld sees meanwhile.

:class:`BareFlood` opens ``size`` TCP connections to an address at once (no MySQL handshake,
nothing sent), as the issue that found the problem did (#19: 5,000 in 0.1 s), and keeps that many
open: every ``top_up`` seconds it replaces the ones the other side closed. It also sorts what the
gate answered: mysqld's greeting (a backend connection was opened) or an ERR packet (refused).
:class:`ConnectionWatch` samples ``Threads_connected`` over mysqld's ``extra_port`` (where the
watch itself is not counted) and keeps the peak. Loopback only: the callers pass lab addresses.
"""

from __future__ import annotations

import contextlib
import errno
import resource
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pymysql

_ERR = 0xFF
_GREETING = 10


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else wanted, hard))


@dataclass
class BareFlood:
    host: str
    port: int
    size: int = 5000
    top_up: float = 1.0
    opened: int = 0
    greeted: int = 0  # the first bytes were mysqld's greeting: a backend connection was opened
    refused: dict[int, int] = field(default_factory=dict)  # ERR code: how many
    closed_by_peer: int = 0
    connect_errors: int = 0
    first_wave_seconds: float | None = None
    _open: dict[int, socket.socket] = field(default_factory=dict)
    _seen: set[int] = field(default_factory=set)  # descriptors whose first bytes were sorted
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> BareFlood:
        _raise_fd_limit(self.size + 1024)
        started = time.monotonic()
        self._fill()
        self.first_wave_seconds = time.monotonic() - started
        self._thread = threading.Thread(target=self._run, name="bare-flood", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for sock in self._open.values():
            sock.close()
        self._open.clear()

    def summary(self) -> str:
        refused = ", ".join(f"ERR {code} x{count}" for code, count in sorted(self.refused.items())) or "none"
        return (f"bare flood of {self.size} to {self.host}:{self.port} (first wave in "
                f"{self.first_wave_seconds or 0:.2f} s): {self.opened} opened, {self.greeted} got mysqld's "
                f"greeting, refused: {refused}, {self.closed_by_peer} closed by the gate, "
                f"{self.connect_errors} connect errors")

    def _fill(self) -> None:
        while len(self._open) < self.size and not self._stop.is_set():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            code = sock.connect_ex((self.host, self.port))
            if code not in (0, errno.EINPROGRESS):
                sock.close()
                self.connect_errors += 1
                return  # the listener's backlog is full, say: try again at the next top-up
            self._open[sock.fileno()] = sock
            self.opened += 1

    def _run(self) -> None:
        while not self._stop.wait(self.top_up):
            self._sweep()
            self._fill()

    def _sweep(self) -> None:
        """Sort first answers and drop the connections the gate closed (to be replaced)."""
        poller = select.poll()
        for fd in self._open:
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(0):
            sock = self._open[fd]
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if data and fd not in self._seen:
                self._seen.add(fd)
                if len(data) > 6 and data[4] == _ERR:
                    code = int.from_bytes(data[5:7], "little")
                    self.refused[code] = self.refused.get(code, 0) + 1
                elif len(data) > 4 and data[4] == _GREETING:
                    self.greeted += 1
            if not data:
                self.closed_by_peer += 1
                self._seen.discard(fd)
                del self._open[fd]
                sock.close()


@dataclass
class ConnectionWatch:
    """Peak ``Threads_connected`` of a mysqld, sampled over its ``extra_port``."""

    host: str
    extra_port: int
    user: str
    password: str
    interval: float = 0.1
    peak: int = 0
    max_connections: int = 0
    samples: int = 0
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ConnectionWatch:
        self._thread = threading.Thread(target=self._run, name="connection-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        conn: Any = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = pymysql.connect(host=self.host, port=self.extra_port, user=self.user,
                                           password=self.password, autocommit=True, connect_timeout=2,
                                           read_timeout=2, ssl_disabled=True)
                with conn.cursor() as cur:
                    cur.execute("SELECT @@global.max_connections, VARIABLE_VALUE FROM "
                                "information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'THREADS_CONNECTED'")
                    row = cur.fetchone()
                assert row is not None
                self.max_connections = int(row[0])
                self.peak = max(self.peak, int(row[1]))
                self.samples += 1
            except (pymysql.MySQLError, OSError):
                self.errors += 1
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
            self._stop.wait(self.interval)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

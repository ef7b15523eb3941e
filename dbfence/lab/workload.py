"""A small application for the demo and the benchmarks: it writes through discovery and the gates.

It inserts numbered rows into a table ``(id INT PRIMARY KEY, via VARCHAR(32))``, finds the
primary with :func:`dbfence.discovery.primary_address` on every (re)connect, as a real
application would, and keeps the outcome of every attempt: acknowledged (with when and through
which gate), refused (no primary, or the gate's "not the primary" error at connect), or unknown
(the connection broke mid-statement: the row may or may not have landed).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pymysql

from dbfence.discovery import NoPrimary, primary_address
from dbfence.lab.cluster import LabCluster


@dataclass
class DiscoveryWriter:
    lab: LabCluster
    table: str
    timeout: float = 10.0  # the application's own read/write timeout
    acknowledged: dict[int, tuple[float, str]] = field(default_factory=dict)
    refused: int = 0
    unknown: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def create_table(self, node: str) -> None:
        with self.lab.connect(node) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {self.table} (id INT PRIMARY KEY, via VARCHAR(32))")

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="discovery-writer", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)

    def first_ack_after(self, since: float, not_via: str) -> float | None:
        """When the first write after ``since`` was acknowledged through another gate than ``not_via``."""
        times = [t for t, via in self.acknowledged.values() if t > since and via != not_via]
        return min(times) if times else None

    def last_gate(self) -> str | None:
        if not self.acknowledged:
            return None
        return max(self.acknowledged.values())[1]

    def run(self) -> None:
        app = self.lab.accounts["app"]
        conn: Any = None
        gate = ""
        row_id = 0
        while not self.stop.is_set():
            row_id += 1  # never reused: an unknown outcome may have landed
            try:
                if conn is None:
                    host, port = primary_address(self.lab.cluster, etcd=self.lab.dcs_endpoints)
                    gate = host
                    conn = pymysql.connect(host=host, port=port, user=app.user, password=app.password,
                                           autocommit=True, connect_timeout=min(2.0, self.timeout),
                                           read_timeout=self.timeout, write_timeout=self.timeout,
                                           ssl_disabled=True)
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {self.table} (id, via) VALUES (%s, %s)", (row_id, gate))
                self.acknowledged[row_id] = (time.monotonic(), gate)
            except NoPrimary:
                self.refused += 1
            except (pymysql.MySQLError, OSError) as exc:
                # Refused at connect (the gate's ERR packet) is a clean refusal; a connection lost
                # mid-statement leaves the outcome unknown, to be checked at the end.
                if conn is None or "not the primary" in str(exc):
                    self.refused += 1
                else:
                    self.unknown.append(row_id)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                time.sleep(0.05)
            time.sleep(0.02)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

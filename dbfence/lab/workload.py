"""A small application for the demo, the benchmarks and the fault matrix: it writes through
discovery and the gates.

It inserts numbered rows into a table ``(id INT PRIMARY KEY, via VARCHAR(32))``, finds the
primary on every (re)connect as a real application would (the etcd key, or Consul DNS), and
keeps the outcome of every attempt: acknowledged (with when and through which gate), refused (no
primary, or the gate's "not the primary" error at connect), or unknown (the connection broke
mid-statement: the row may or may not have landed). ``attempts`` holds every one of them as a
:class:`dbfence.lab.history.Attempt`, with wall-clock start and end and the node behind the gate,
for the fault-matrix checker.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pymysql

from dbfence.discovery import NoPrimary, primary_address
from dbfence.lab.cluster import LabCluster
from dbfence.lab.history import Attempt, Outcome


def discover(lab: LabCluster, timeout: float = 1.0) -> tuple[str, int]:
    """The primary's gate as an application sees it: the etcd key, or Consul DNS A records."""
    if lab.dcs_kind == "etcd":
        return primary_address(lab.cluster, etcd=lab.dcs_endpoints)
    assert lab.consul is not None
    host, port = lab.consul.dns_address.rsplit(":", 1)
    query = dns.message.make_query(f"primary.{lab.cluster}.service.consul", "A")
    try:
        answer = dns.query.udp(query, host, port=int(port), timeout=timeout)
    except (dns.exception.DNSException, OSError) as exc:
        raise NoPrimary(f"Consul DNS did not answer: {exc}") from exc
    addresses = [] if answer.rcode() == dns.rcode.NXDOMAIN else \
        sorted(item.address for rrset in answer.answer for item in rrset)
    if len(addresses) != 1:
        raise NoPrimary(f"Consul DNS names {len(addresses)} primaries, not one")
    return addresses[0], lab.agents[0].gate_port  # every lab gate shares one port number


@dataclass
class DiscoveryWriter:
    lab: LabCluster
    table: str
    timeout: float = 10.0  # the application's own read/write timeout
    clients: int = 1  # concurrent application connections, each in its own thread
    pause: float = 0.02  # between two writes of one client
    acknowledged: dict[int, tuple[float, str]] = field(default_factory=dict)  # id: (monotonic, gate)
    refused: int = 0
    unknown: list[int] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def create_table(self, node: str) -> None:
        with self.lab.connect(node) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {self.table} (id INT PRIMARY KEY, via VARCHAR(32))")

    def start(self) -> None:
        for number in range(self.clients):
            thread = threading.Thread(target=self.run, name=f"discovery-writer-{number}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)

    def first_ack_after(self, since: float, not_via: str) -> float | None:
        """When the first write after ``since`` was acknowledged through another gate than ``not_via``."""
        times = [t for t, via in list(self.acknowledged.values()) if t > since and via != not_via]
        return min(times) if times else None

    def last_gate(self) -> str | None:
        if not self.acknowledged:
            return None
        return max(list(self.acknowledged.values()))[1]

    def acknowledged_since(self, wall: float) -> int:
        """How many writes that started at or after ``wall`` (``time.time()``) were acknowledged."""
        return sum(1 for a in list(self.attempts) if a.start >= wall and a.outcome is Outcome.ACKNOWLEDGED)

    def _record(self, row_id: int, start: float, node: str, outcome: Outcome, gate: str = "") -> None:
        with self._lock:
            self.attempts.append(Attempt(row_id, start, time.time(), node, outcome))
            if outcome is Outcome.ACKNOWLEDGED:
                self.acknowledged[row_id] = (time.monotonic(), gate)
            elif outcome is Outcome.REFUSED:
                self.refused += 1
            else:
                self.unknown.append(row_id)

    def run(self) -> None:
        app = self.lab.accounts["app"]
        node_of_gate = {a.address: a.name for a in self.lab.agents}
        conn: Any = None
        gate = ""
        while not self.stop.is_set():
            with self._lock:
                row_id = next(self._ids)  # never reused: an unknown outcome may have landed
            start = time.time()
            try:
                if conn is None:
                    host, port = discover(self.lab)
                    gate = host
                    conn = pymysql.connect(host=host, port=port, user=app.user, password=app.password,
                                           autocommit=True, connect_timeout=min(2.0, self.timeout),
                                           read_timeout=self.timeout, write_timeout=self.timeout,
                                           ssl_disabled=True)
                start = time.time()  # the statement's own interval, not discovery's
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {self.table} (id, via) VALUES (%s, %s)", (row_id, gate))
                self._record(row_id, start, node_of_gate.get(gate, gate), Outcome.ACKNOWLEDGED, gate)
            except NoPrimary:
                self._record(row_id, start, "", Outcome.REFUSED)
            except (pymysql.MySQLError, OSError) as exc:
                # Refused at connect (the gate's ERR packet) is a clean refusal; a connection lost
                # mid-statement leaves the outcome unknown, to be checked at the end.
                node = node_of_gate.get(gate, gate)
                if conn is None or "not the primary" in str(exc):
                    self._record(row_id, start, node, Outcome.REFUSED)
                else:
                    self._record(row_id, start, node, Outcome.UNKNOWN)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                self.stop.wait(0.05)
            self.stop.wait(self.pause)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

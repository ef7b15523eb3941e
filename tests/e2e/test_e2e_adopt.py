"""Adopting a running cluster (issue 17) on real MariaDB and etcd.

The lab starts as an operator's cluster before dbfence: db1 a writable primary, db2 and db3
replicating from it, no agent, nothing in etcd. A client writes straight to db1's mysqld all
along while the agents start one by one; then it moves to the gate.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pymysql
import pytest

from dbfence.lab import agents as agents_mod
from dbfence.lab.agents import AgentProcess, AgentTuning
from dbfence.lab.cluster import LabCluster
from dbfence.lab.mariadb_servers import MysqlNode, describe
from dbfence.lab.procs import free_port
from dbfence.lab.wait import wait_until
from tests.conftest import LabFactory
from tests.e2e.e2e_helpers import app_connect, discover, status

pytestmark = pytest.mark.timeout(180)

TUNING = AgentTuning()  # lossless, TTL 3 s


@dataclass
class DirectWriter:
    """A client connected straight to one mysqld, inserting a row at a time on one connection
    (reconnecting after an error, as a pool would), counting what was acknowledged and what failed."""

    lab: LabCluster
    node: MysqlNode
    next_id: int = 1
    acknowledged: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> DirectWriter:
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS app.adopt (id INT PRIMARY KEY, via VARCHAR(8))")
        self.thread = threading.Thread(target=self._run, name="direct-writer", daemon=True)
        self.thread.start()
        wait_until(lambda: len(self.acknowledged) >= 5, timeout=10, what="the direct writer's first rows")
        return self

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=10)

    def _connect(self) -> Any:
        return app_connect(self.lab, self.node.host, self.node.port, timeout=5.0)

    def _run(self) -> None:
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = self._connect()
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO app.adopt VALUES (%s, 'direct')", (self.next_id,))
                self.acknowledged.append(self.next_id)
                self.next_id += 1
            except (pymysql.MySQLError, OSError) as exc:
                self.errors.append(f"{time.monotonic():.3f} {exc}")
                self.next_id += 1  # the row may or may not have landed: never reuse its id
                conn = None
                time.sleep(0.02)
            else:
                time.sleep(0.005)
        if conn is not None:
            conn.close()


def start_agent(lab: LabCluster, name: str) -> AgentProcess:
    """One agent, as `systemctl start dbfence` would on that host. Every agent's gate and HTTP API
    share one pair of port numbers, each on its own loopback address (as `lab up --agents`)."""
    index = [node.name for node in lab.mysql].index(name)
    node = lab.mysql[index]
    if "adopt_ports" not in lab.extra:
        lab.extra["adopt_ports"] = [free_port(), free_port()]
    gate_port, http_port = lab.extra["adopt_ports"]
    address = agents_mod.agent_address(index + 1)
    config = agents_mod.write_agent_files(lab, node, address, gate_port, http_port, TUNING)
    agent = agents_mod.start_agent(name, address, gate_port, http_port, config)
    lab._record_agent(agent)  # stopped with the lab whatever happens next
    return agent


def role(lab: LabCluster, name: str) -> str | None:
    value = status(lab, name).get("role")
    return None if value is None else str(value)


def rows(lab: LabCluster, node: MysqlNode) -> set[int]:
    agent = lab.accounts["agent"]
    conn = pymysql.connect(host=node.host, port=node.port, user=agent.user, password=agent.password,
                           connect_timeout=5, autocommit=True, ssl_disabled=True)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM app.adopt")
        return {int(row[0]) for row in cur.fetchall()}


def assert_nothing_lost_nor_errant(lab: LabCluster, acknowledged: list[int]) -> None:
    """Every acknowledged row on every node, and every node's GTID history the primary's."""
    primary = lab.mysql[0]
    expected = set(acknowledged)
    wait_until(lambda: all(expected <= rows(lab, node) for node in lab.mysql), timeout=30,
               what="every acknowledged row on every node")
    agent = lab.accounts["agent"]
    primary_pos = describe(primary, agent)["gtid_binlog_pos"]
    for node in lab.mysql[1:]:
        info = describe(node, agent)
        # Replicas never wrote: their own binlog holds only db1's (server 1) transactions.
        assert only_db1_wrote(info["gtid_binlog_pos"]), info
        assert info["io_running"] == "Yes" and info["sql_running"] == "Yes", info
    assert only_db1_wrote(primary_pos), primary_pos


def only_db1_wrote(gtid_pos: object) -> bool:
    return all(part.split("-")[1] == "1" for part in str(gtid_pos).split(",") if part)


def move_writer_to_the_gate(lab: LabCluster, ids: range) -> None:
    """The client now finds the primary through discovery and writes through its gate."""
    host, port = discover(lab)
    assert host == lab.agent("db1").address
    conn = app_connect(lab, host, port)
    with conn, conn.cursor() as cur:
        for row_id in ids:
            cur.execute("INSERT INTO app.adopt VALUES (%s, 'gate')", (row_id,))


def test_agents_started_primary_first_adopt_without_a_writer_error(lab_factory: LabFactory) -> None:
    lab = lab_factory()
    writer = DirectWriter(lab, lab.mysql[0]).start()
    try:
        started = time.monotonic()
        start_agent(lab, "db1")
        # Alone, db1's agent adopts its running primary: it admits, and the direct writer never
        # saw read_only or a killed session.
        wait_until(lambda: lab.primaries() == ["db1"], timeout=30, what="db1 admitting")
        print(f"\ndb1 admitting {time.monotonic() - started:.2f}s after its agent was started")
        for name in ("db2", "db3"):
            start_agent(lab, name)
        assert lab.wait_settled(timeout=30) == "db1"
        written = len(writer.acknowledged)
        wait_until(lambda: len(writer.acknowledged) > written + 20, timeout=10,
                   what="direct writes after every agent runs")
    finally:
        writer.finish()
    print(f"direct writes acknowledged: {len(writer.acknowledged)}, errors: {len(writer.errors)}")
    assert writer.errors == []
    assert lab.primaries() == ["db1"]
    through_gate = range(writer.next_id + 1, writer.next_id + 51)
    move_writer_to_the_gate(lab, through_gate)
    assert_nothing_lost_nor_errant(lab, [*writer.acknowledged, *through_gate])
    assert status(lab, "db1")["lock"]["holder"] == "db1"


def test_a_replica_started_first_waits_for_its_unmanaged_primary(lab_factory: LabFactory) -> None:
    lab = lab_factory()
    writer = DirectWriter(lab, lab.mysql[0]).start()
    try:
        start_agent(lab, "db2")
        start_agent(lab, "db3")
        # Both replicas see the lock free and their source without an agent: they neither race
        # nor stop receiving, and say why. Watched for two TTLs (a race would take one round).
        def waiting(name: str) -> bool:
            doc = status(lab, name)
            return doc.get("role") == "replica" and any(
                refusal.startswith("source_unmanaged") for refusal in doc.get("refusals", []))
        wait_until(lambda: waiting("db2") and waiting("db3"), timeout=20, what="db2 and db3 waiting for db1")
        watch_until = time.monotonic() + 2 * TUNING.ttl
        while time.monotonic() < watch_until:
            for name in ("db2", "db3"):
                doc = status(lab, name)
                assert doc.get("role") == "replica", doc
                assert doc["lock"]["holder"] is None, doc
            assert describe(lab.mysql[1], lab.accounts["agent"])["io_running"] == "Yes"
            time.sleep(0.2)
        started = time.monotonic()
        start_agent(lab, "db1")
        assert lab.wait_settled(timeout=30) == "db1"
        print(f"\nsettled on db1 {time.monotonic() - started:.2f}s after its agent was started")
        written = len(writer.acknowledged)
        wait_until(lambda: len(writer.acknowledged) > written + 20, timeout=10,
                   what="direct writes after every agent runs")
    finally:
        writer.finish()
    print(f"direct writes acknowledged: {len(writer.acknowledged)}, errors: {len(writer.errors)}")
    assert writer.errors == []
    through_gate = range(writer.next_id + 1, writer.next_id + 51)
    move_writer_to_the_gate(lab, through_gate)
    assert_nothing_lost_nor_errant(lab, [*writer.acknowledged, *through_gate])
    assert role(lab, "db2") == "replica" and role(lab, "db3") == "replica"

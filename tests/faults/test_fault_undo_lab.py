"""A fault row whose injection fails half-way undoes what it did, on real servers, at once: the
soak goes on after a fault it could not inject. Seed 201 waited for a primary writing on promises
with failsafe off, gave up, and left etcd without quorum for the rest of the run; seed 305's
``partition-laggard-holds-more`` timed out waiting for writes and left a replica cut off from the
primary and another delayed by 30 s; seed 301's table lock held a laggard's applier for the
whole 30 s of a wait that failed. Each test fails on a lab left as the failed injection made it."""

from __future__ import annotations

import re
import time

import psutil
import pymysql
import pytest

from dbfence.lab import etcd_servers, netns
from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import LabCluster
from dbfence.lab.errors import LabError
from dbfence.lab.fault_model import inject
from dbfence.lab.faults import Fault, FaultContext, all_faults
from dbfence.lab.wait import WaitTimeout, wait_until
from dbfence.lab.workload import DiscoveryWriter
from tests.conftest import LabFactory

needs_netns = pytest.mark.skipif(netns.unavailable_reason() is not None,
                                 reason=f"network partitions skipped: {netns.unavailable_reason()}")


def _fault(kind: str) -> Fault:
    return next(f for f in all_faults() if f.name == kind)


def _seconds(acted: str | None, what: str, pattern: str = "") -> float:
    """How long ``acted`` says the step ``what`` (then the regular expression ``pattern``) acted."""
    found = re.search(re.escape(what) + pattern + r" for (\d+\.\d) s", acted or "")
    assert found, acted
    return float(found[1])


@pytest.mark.parametrize("kind", ["etcd-quorum-loss+mysqld-kill+failsafe",
                                  "etcd-quorum-loss+promiser-restart+failsafe"])
def test_a_quorum_loss_whose_next_step_fails_gives_etcd_its_quorum_back(lab_factory: LabFactory,
                                                                         kind: str) -> None:
    lab = lab_factory(mysql_count=1, etcd_members=3)
    # no agent here writes on promises: the wait for it fails (TTL 0.5 s: after 6.5 s)
    ctx = FaultContext(lab, AgentTuning(ttl=0.5), DiscoveryWriter(lab, "app.undo"), "db1", "app.undo")
    with pytest.raises(WaitTimeout):
        inject(_fault(kind), ctx)
    wait_until(lambda: all(etcd_servers.healthy(m) for m in lab.etcd), timeout=30, what="etcd's quorum back")
    assert _seconds(ctx.acted(), "killed etcd ", r"\S+ and \S+") >= 6.5


def _just_wrote(writer: DiscoveryWriter) -> None:
    """As if the application's last write had just been acknowledged, and none followed: the
    preparation begins (writes flow), then its wait for more fails."""
    writer.acknowledged[0] = (time.monotonic(), "db1")


def _replicated(lab: LabCluster, node: str, table: str, row: int) -> bool:
    with lab.connect(node) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {table} WHERE id = %s", (row,))
        found = cur.fetchone()
        return found is not None and found[0] == 1


def test_a_lagging_replica_whose_wait_for_writes_fails_releases_its_table_lock(
        lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=2)
    table = "app.undo_lock"
    writer = DiscoveryWriter(lab, table)  # never started: no write comes, the wait fails
    writer.create_table("db1")
    wait_until(lambda: _replicated_table(lab, "db2", table), timeout=30, what=f"{table} on db2")
    ctx = FaultContext(lab, AgentTuning(), writer, "db1", table, preparation_wait=1.0)
    _just_wrote(writer)
    with pytest.raises(WaitTimeout) as failed:
        inject(_fault("lagging-replica+mysqld-kill"), ctx)
    # the failure's traceback, kept here, holds the injector's frame: the lock must not live on in it
    assert failed.value is not None
    assert 1.0 <= _seconds(ctx.acted(), f"held db2's applier (LOCK TABLES {table} READ)") < 10
    assert lab.node("db1").process.alive()  # the kill was never reached
    with lab.connect("db1", account="app") as conn, conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (1, 'after the failed injection')")
    wait_until(lambda: _replicated(lab, "db2", table, 1), timeout=30, what="db2's applier to apply again")


def _replicated_table(lab: LabCluster, node: str, table: str) -> bool:
    schema, name = table.split(".")
    with lab.connect(node) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s "
                    "AND table_name = %s", (schema, name))
        found = cur.fetchone()
        return found is not None and found[0] == 1


def _sql_delay(lab: LabCluster, node: str) -> int:
    with lab.connect(node) as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute("SHOW SLAVE STATUS")
        status = cur.fetchone()
        assert status is not None
        return int(status["SQL_Delay"])


@needs_netns
def test_a_laggard_holds_more_whose_wait_for_writes_fails_heals_its_cut_and_lifts_the_delay(
        lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=3, netns=True)
    assert lab.netns is not None
    writer = DiscoveryWriter(lab, "app.undo_cut")
    ctx = FaultContext(lab, AgentTuning(), writer, "db1", "app.undo_cut", preparation_wait=1.0)
    _just_wrote(writer)
    with pytest.raises(WaitTimeout, match="writes acknowledged without db2"):
        inject(_fault("partition-laggard-holds-more"), ctx)
    assert netns.isolated_hosts(lab.netns) == []
    assert _sql_delay(lab, "db3") == 0
    acted = ctx.acted()
    assert 1.0 <= _seconds(acted, "cut db2 off from db1") < 10
    assert _seconds(acted, "delayed db3's applier by 30 s") >= 1.0


def test_a_frozen_peer_whose_quorum_loss_fails_is_resumed(lab_factory: LabFactory) -> None:
    # One etcd member: the quorum loss, after the replica's agent was stopped, cannot be injected.
    lab = lab_factory(mysql_count=2, etcd_members=1, agents=True)
    primary = lab.wait_settled()
    replica = next(a for a in lab.agents if a.name != primary)
    table = "app.undo_frozen"
    ctx = FaultContext(lab, AgentTuning(), DiscoveryWriter(lab, table), primary, table)
    with pytest.raises(LabError, match="three etcd members"):
        inject(_fault("etcd-quorum-loss+frozen-peer+failsafe"), ctx)
    assert psutil.Process(replica.pid).status() != psutil.STATUS_STOPPED
    _seconds(ctx.acted(), f"stopped {replica.name}'s agent (SIGSTOP)")

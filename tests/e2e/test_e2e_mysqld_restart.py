"""A replica's mysqld that crashes on its own is started again by its agent (``[rejoin]`` not
manual, where systemd's Restart= must stay off), and the replica catches up; the primary's is
never touched (it fails over instead, tested elsewhere)."""

from __future__ import annotations

import time

import pytest

from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import LabCluster
from dbfence.lab.fault_model import inject
from dbfence.lab.faults import FaultContext, all_faults
from dbfence.lab.wait import wait_until
from dbfence.lab.workload import DiscoveryWriter
from tests.conftest import LabFactory
from tests.e2e.e2e_helpers import only_primary, rows_on, settled_two_nodes, status, wait_for_role, write_row

pytestmark = pytest.mark.timeout(180)


def test_a_crashed_replica_mysqld_is_started_again_and_catches_up(lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=2, dcs="etcd", agents=True,
                      agent_tuning=AgentTuning(rejoin="truncate", lossless=False))
    primary, replica = settled_two_nodes(lab)

    lab.kill_mysql(replica)  # SIGKILL: a crash, its pid file stays
    killed = time.monotonic()
    write_row(lab, 2)  # the primary keeps taking writes meanwhile (asynchronous replication)

    def restarted() -> bool:
        report = status(lab, replica)
        restart = report.get("mysqld_restart") or {}
        return restart.get("restarts") == 1 and bool(report.get("database", {}).get("healthy"))

    wait_until(restarted, timeout=90, what=f"{replica}'s agent to start its crashed mysqld")
    back_after = time.monotonic() - killed
    wait_until(lambda: rows_on(lab, replica) == {1, 2}, timeout=60, what=f"{replica} to catch up")
    print(f"\n{replica}'s mysqld started again by its agent {back_after:.1f} s after the crash; "
          f"{status(lab, replica)['mysqld_restart']}")
    assert only_primary(lab) == primary and status(lab, replica)["role"] == "replica"


def test_a_crashed_primary_mysqld_is_started_again_once_fenced_and_its_binlog_tail_copied(
        lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=2, dcs="etcd", agents=True,
                      agent_tuning=AgentTuning(rejoin="truncate", lossless=False))
    primary, replica = settled_two_nodes(lab)

    lab.kill_mysql(primary)  # SIGKILL: a crash, its pid file stays
    killed = time.monotonic()
    wait_for_role(lab, replica, "primary", timeout=60)

    def restarted() -> bool:
        report = status(lab, primary)
        restart = report.get("mysqld_restart") or {}
        return restart.get("restarts") == 1 and bool(report.get("database", {}).get("healthy"))

    wait_until(restarted, timeout=90, what=f"{primary}'s agent to copy its binlog tail and start mysqld")
    back_after = time.monotonic() - killed
    restart = status(lab, primary)["mysqld_restart"]
    print(f"\n{primary}'s mysqld started again by its agent {back_after:.1f} s after the crash; {restart}")
    assert restart["binlog_tail_saved"] and "binlog-tail-" in restart["binlog_tail_saved"]
    assert only_primary(lab) == replica


def test_the_soaks_kill_heal_leaves_the_restart_to_the_agent_in_truncate_mode(
        lab_factory: LabFactory) -> None:
    """Soak seeds 305 and 411: the nemesis's heal of a kill -9 started the primary's mysqld itself,
    before its agent copied the binlog tail, and the node's evidence was then unusable. In
    truncate mode the agent owns the restart (as in production, systemd's Restart= off): the heal
    waits for it."""
    tuning = AgentTuning(rejoin="truncate", lossless=False)
    lab = lab_factory(mysql_count=2, dcs="etcd", agents=True, agent_tuning=tuning)
    primary = only_primary(lab)
    replica = next(n.name for n in lab.mysql if n.name != primary)
    wait_for_role(lab, replica, "replica", timeout=60)
    table = "app.heal_restart"
    writer = DiscoveryWriter(lab, table)
    writer.create_table(primary)
    # The DDL applied on the replica first: a kill just after it, while a later commit is still
    # prepared, makes MariaDB's recovery refuse to cut the binlog past a non-transactional event.
    wait_until(lambda: _has_table(lab, replica, table), timeout=30, what=f"{table} on {replica}")
    fault = next(f for f in all_faults() if f.name == "mysqld-kill")
    ctx = FaultContext(lab, tuning, writer, primary, table)
    heal = inject(fault, ctx)
    heal()  # returns once a mysqld runs again

    def restart() -> dict[str, object]:
        return dict(status(lab, primary).get("mysqld_restart") or {})
    # The agent's start returns once mysqld accepts clients; the heal returned once it ran. On
    # the old heal, which started mysqld at once, the agent never starts it: restarts stays 0.
    wait_until(lambda: restart().get("restarts") == 1, timeout=60,
               what=f"{primary}'s agent to report its start of mysqld (not the heal's)")
    assert "binlog-tail-" in str(restart()["binlog_tail_saved"])


def _has_table(lab: LabCluster, node: str, table: str) -> bool:
    schema, name = table.split(".")
    with lab.connect(node) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s "
                    "AND table_name = %s", (schema, name))
        found = cur.fetchone()
        return found is not None and found[0] == 1

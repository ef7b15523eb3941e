"""``[rejoin] mode = "truncate"`` end to end: a former primary whose commits waited for an ack
repairs itself and comes back as a replica, with what it removed saved and named."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from dbfence.lab.agents import AgentTuning, http_status
from dbfence.lab.cluster import LabCluster
from dbfence.lab.wait import wait_until
from dbfence.locks.factory import DcsConfig, open_lock
from dbfence.locks.model import Intent
from tests.conftest import LabFactory
from tests.e2e.e2e_helpers import rows_on, status, wait_for_role, write_row, write_until_acknowledged
from tests.mysql.mysql_lab_helpers import actions as mysql_actions

pytestmark = pytest.mark.timeout(240)


def only_primary(lab: LabCluster) -> str:
    primaries = lab.primaries()
    assert len(primaries) == 1, primaries
    return primaries[0]


def waiting_for_an_ack(lab: LabCluster, name: str) -> bool:
    with lab.connect(name) as conn, conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_wait_sessions'")
        row = cur.fetchone()
    return row is not None and int(row[1]) > 0


def test_a_hung_primary_with_waiting_commits_truncates_them_and_rejoins(lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=3, dcs="etcd", agents=True, agent_tuning=AgentTuning(rejoin="truncate"))
    old = only_primary(lab)
    write_row(lab, 1)
    replicas = [n.name for n in lab.mysql if n.name != old]
    wait_until(lambda: all(http_status(lab.agent(n), "/replica")[0] == 200 for n in replicas),
               timeout=60, what="the replicas to replicate")
    # Its replicas stop receiving, so its next commits (the agent's heartbeat writes at least)
    # wait for an ack; then mysqld hangs: the others take over, the old one cannot be asked.
    # Paused, the replicas' agents leave their IO threads stopped (they would restart them within
    # a round and acknowledge); the pause ends once mysqld is stopped.
    operator = open_lock(DcsConfig(kind="etcd", endpoints=tuple(lab.dcs_endpoints)), lab.cluster, "operator")
    try:
        operator.write_intent(Intent(paused=True, pause_reason="test"))
        wait_until(lambda: all(status(lab, n)["intent"]["paused"] for n in (old, *replicas)), timeout=10,
                   what="every agent to see the pause")
        for name in replicas:
            assert mysql_actions(lab, name).stop_receiving()
        wait_until(lambda: waiting_for_an_ack(lab, old), timeout=10,
                   what=f"a commit on {old} to wait for an ack")
        lab.kill_mysql(old, signal.SIGSTOP)
        operator.write_intent(Intent())
    finally:
        operator.close()
    write_until_acknowledged(lab, 100, timeout=60)
    new = only_primary(lab)
    assert new != old
    lab.kill_mysql(old, signal.SIGCONT)
    resumed = time.monotonic()

    wait_for_role(lab, old, "replica", timeout=90)
    back_after = time.monotonic() - resumed
    report = status(lab, old)
    repair = report["repair"]
    print(f"\n{old} back as a replica {back_after:.1f} s after SIGCONT; repair: {repair}")
    assert repair["gave_up"] == "", repair
    saved = Path(repair["saved_file"])
    assert saved.name.startswith(f"errant-{old}-") and saved.exists(), repair
    assert repair["last"]["errant_before"] and repair["last"]["errant_after"] == "", repair
    assert "GTID" in saved.read_text()
    # The waiting commits stayed in doubt: the fence SIGKILLed mysqld before anything ended them.
    assert '"event": "fenced_by_crash"' in Path(lab.agent(old).log).read_text(errors="replace")
    # It follows the new primary and has everything acknowledged there, nothing of its own.
    write_row(lab, 1000)
    deadline = time.monotonic() + 30
    while rows_on(lab, old) != rows_on(lab, new) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rows_on(lab, old) == rows_on(lab, new)
    assert not status(lab, old)["database"]["errant"]

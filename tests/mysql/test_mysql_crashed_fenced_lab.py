"""A fenced former primary whose mysqld crashed on its own, on real MariaDB 10.11: the agent copies
the binlog files crash recovery reads, then starts mysqld; recovery cuts the commit that waited for
its ack (never acknowledged), and the copy still holds it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from dbfence.agent.binlog_tail_saver import BinlogTailSaver
from dbfence.agent.mysqld_restarter import MysqldRestarter
from dbfence.agent.state import Role
from dbfence.lab.fault_model import exited
from dbfence.lab.wait import wait_until
from dbfence.mysql.repair import MysqldControl
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import actions, one, poll, sql
from tests.mysql.test_mysql_repair_lab import (
    commit_waiting_for_an_ack,
    cut_replica_and_promote_it,
    lossless_pair,
    rows,
)


def test_a_fenced_nodes_crashed_mysqld_is_started_once_its_binlog_tail_is_copied(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    lab = lossless_pair(lab_factory)
    node = lab.node("db1")
    saver = BinlogTailSaver(state_dir=tmp_path / "state", node="db1", mysql=actions(lab, "db1"),
                            tool="mariadb-binlog")
    restarter = MysqldRestarter(
        mode="truncate", node="db1", mysql=actions(lab, "db1"), save_tail=saver.save, remember=saver.remember,
        control=MysqldControl(pid_file=Path(node.pid_file), start_timeout=120.0,
                              start_command=[sys.executable, "-m", "dbfence", "lab", "start-mysql", "--dir",
                                             str(lab.directory), "--recovery", "db1"]))

    def tick(role: Role) -> None:
        restarter.tick(role, killed_by_fence=False, repair_running=False)
        restarter.join(120)

    tick(Role.PRIMARY)  # a running mysqld: where its binlog is, read once
    poll(lambda: saver.location is not None, 30, "the binlog's location")
    assert BinlogTailSaver(state_dir=tmp_path / "state", node="db1", mysql=actions(lab, "db1"),
                           tool="mariadb-binlog").location == saver.location  # kept for a restarted agent

    writer, outcome = commit_waiting_for_an_ack(lab)
    waiting = str(one(sql(lab, "db1"), "SELECT @@gtid_binlog_pos AS p")["p"])
    lab.kill_mysql("db1")  # crashed on its own (not the fence's doing)
    wait_until(exited(node.process.alive), timeout=60, what="db1's mysqld to die")
    writer.join(10)
    cut_replica_and_promote_it(lab)

    tick(Role.FENCED)  # the crash seen: the copy first, then (FIRST_START_DELAY later) the start
    status = restarter.status()
    copy = Path(status["binlog_tail_saved"])
    assert copy.parent == tmp_path / "state" and status["restarts"] == 0, status
    files = sorted(str(f) for f in copy.iterdir())
    dump = subprocess.run(["mariadb-binlog", "--verbose", *files], capture_output=True, text=True, check=True)
    assert f"GTID {waiting} trans" in dump.stdout and "@2='never acknowledged'" in dump.stdout

    deadline = time.monotonic() + 120
    while restarter.status()["restarts"] == 0:
        assert time.monotonic() < deadline, restarter.status()
        tick(Role.FENCED)
        time.sleep(0.1)
    print(f"\ncrashed fenced node: {restarter.status()}")
    # Recovery cut the commit that waited for its ack; the copy keeps it.
    assert rows(lab, "db1") == [(1, "acknowledged")]
    assert outcome and outcome[0] != "OK", outcome

"""The rebuild on real MariaDB 10.11: a node whose errant transaction is committed (crash recovery
cannot remove it) is cloned from a donor with mariadb-backup, keeps its old data directory and
the saved errant transaction, and ends a replica of the new primary."""

from __future__ import annotations

import sys
from pathlib import Path

from dbfence.lab.cluster import LabCluster
from dbfence.mysql.rebuild import BackupStream, Progress, RebuildResult, rebuild_from_stream
from dbfence.mysql.repair import MysqldControl
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import actions, poll, primary_address, run, sql
from tests.mysql.test_mysql_repair_lab import cut_replica_and_promote_it, rows


def committed_errant_pair(lab_factory: LabFactory) -> LabCluster:
    """db2 is the new primary; db1, the old one, holds a committed transaction db2 lacks."""
    lab = lab_factory(mysql_count=2)
    primary = sql(lab, "db1")
    run(primary, "CREATE TABLE app.t (id INT PRIMARY KEY, note VARCHAR(40))")
    run(primary, "INSERT INTO app.t VALUES (1, 'replicated')")
    primary.close()
    poll(lambda: rows(lab, "db2") == [(1, "replicated")], 30, "db2 to apply the first row")
    cut_replica_and_promote_it(lab)
    # Asynchronous: committed in the engine and maybe acknowledged. Crash recovery keeps it.
    run(sql(lab, "db1", account="app"), "INSERT INTO app.t VALUES (2, 'errant, committed')")
    return lab


def rebuild(lab: LabCluster, tmp_path: Path, progress: list[Progress], rate: int = 0) -> RebuildResult:
    node = lab.node("db1")
    control = MysqldControl(
        pid_file=Path(node.pid_file), start_timeout=120.0,
        start_command=[sys.executable, "-m", "dbfence", "lab", "start-mysql", "--dir", str(lab.directory), "db1"])
    donor = BackupStream(actions(lab, "db2"), bytes_per_second=rate)
    return rebuild_from_stream(actions(lab, "db1"), control, lambda: actions(lab, "db2").gtid_positions().history,
                               lambda: (donor.estimate, donor.chunks()), tmp_path / "errant-db1.sql",
                               "-- dbfence test excerpt\n", progress.append, stamp="test")


def test_a_committed_errant_transaction_is_saved_and_the_node_is_rebuilt_from_the_donor(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    lab = committed_errant_pair(lab_factory)
    datadir = Path(lab.node("db1").datadir)
    progress: list[Progress] = []

    result = rebuild(lab, tmp_path, progress)
    print(f"\nrebuild: {result}")

    assert result.errant_before == "0-1-3"
    assert result.saved_file is not None
    saved = result.saved_file.read_text()
    assert "GTID 0-1-3" in saved and "errant, committed" in saved
    assert result.old_datadir == datadir.with_name(f"{datadir.name}.dbfence-old-test")
    assert (result.old_datadir / "mysql-bin.index").exists()  # the old data directory is kept
    assert progress and progress[-1].done == result.progress.done > 0
    assert rows(lab, "db1") == [(1, "replicated"), (3, "new primary")]  # the donor's data, not its own

    actions(lab, "db1").repoint(primary_address(lab, "db2"), actions(lab, "db2").gtid_positions().history,
                                semi_sync_replica=False)
    run(sql(lab, "db2"), "INSERT INTO app.t VALUES (4, 'after the rebuild')")
    poll(lambda: rows(lab, "db1") == [(1, "replicated"), (3, "new primary"), (4, "after the rebuild")], 30,
         "db1 to replicate from db2 after the rebuild")

"""A former primary repaired after a full disk, primary again, fenced again (soak seed 305), on real
MariaDB: the second repair leaves the first one's cut transaction, a remnant in an older binlog
file, alone, and removes exactly what the new term left unacknowledged."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from pathlib import Path

import pymysql
import pytest

from dbfence.agent.actions import ActionReason, TruncateErrant
from dbfence.lab import mariadb_servers
from dbfence.lab.cluster import LabCluster
from dbfence.lab.fault_labs import move_datadir_to_tmpfs
from dbfence.mysql.gtid import Gtid
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import actions, one, poll, primary_address, run, sql
from tests.mysql.test_mysql_repair_full_disk_lab import fill, pad_binlog, waiting_for_space
from tests.mysql.test_mysql_repair_lab import NEVER_FALLS_BACK, lab_keeper, primary_again_by_hand, rows


def test_a_second_repair_leaves_the_first_ones_cut_transaction_alone_and_removes_its_own(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    """Term 1: a commit a full disk cut after its GTID event, its write killed by the fence, the
    repair saves it as far as it reads and restarts mysqld (which drops it from its GTID state; its
    start stays in the older binlog file). db1 rejoins db2, applies db2's commits (their seqs pass
    the cut one's), is primary again, and its one commit of term 2 waits for an ack no replica
    gives: the fence crashes mysqld, and db2's newest GTID of server 1 is still term 1's. The repair
    must save and remove that commit, leave the remnant out, and start mysqld."""
    if os.geteuid() != 0:
        pytest.skip("a small disk of its own takes a tmpfs mount (root)")
    lab = lab_factory(mysql_count=2)
    mounts: list[Path] = []
    try:
        move_datadir_to_tmpfs(lab, "db1", "64m", mounts)
        mariadb_servers.open_for_writes(lab.node("db1"), lab.accounts["agent"])
        db1, db2 = actions(lab, "db1"), actions(lab, "db2")
        db1.set_semi_sync_primary(NEVER_FALLS_BACK)
        db2.set_semi_sync_replica(True)
        primary = sql(lab, "db1")
        poll(lambda: one(primary, "SHOW STATUS LIKE 'Rpl_semi_sync_master_clients'")["Value"] == "1",
             30, "db2 to be a semi-sync replica of db1")
        run(primary, "CREATE TABLE app.t (id INT PRIMARY KEY, note VARCHAR(6000))")
        run(primary, "INSERT INTO app.t VALUES (1, 'acknowledged')")
        history: list[tuple[str, str]] = []
        keeper = lab_keeper(lab, tmp_path, history)
        keeper.retry_max = 4.0
        keeper.on_fencing()
        poll(lambda: keeper.view().evidence_problem is None, 30, "the fencing evidence")

        # Term 1 (seed 305's first fence): nothing waits for an ack (recovery truncates no binlog);
        # room for the next commit's GTID event, not for its Annotate_rows event (about 75 bytes).
        pad_binlog(primary, reserve=0, target=70, window=(60, 80))
        acknowledged = rows(lab, "db1")
        poll(lambda: rows(lab, "db2") == acknowledged, 30, "db2 to apply every acknowledged row")
        run(sql(lab, "db2"), "STOP SLAVE IO_THREAD")
        outcome: list[object] = []

        def commit(statement: str) -> None:
            try:
                run(sql(lab, "db1", account="app", read_timeout=600), statement)
                outcome.append("OK")
            except pymysql.MySQLError as exc:
                outcome.append(exc.args[0])

        filler = fill(Path(lab.node("db1").datadir))
        threading.Thread(target=commit, args=("INSERT INTO app.t VALUES (4, 'cut by a full disk')",),
                         daemon=True).start()
        poll(lambda: waiting_for_space(primary), 30, "the commit to wait for disk space")
        remnant = Gtid.parse(str(one(primary, "SELECT @@gtid_binlog_pos AS p")["p"]))
        with primary.cursor() as cur:  # the fence's KILL ends the wait for space, the disk still full
            cur.execute("SELECT ID FROM information_schema.PROCESSLIST "
                        "WHERE STATE = 'Waiting for someone to free space'")
            for row in cur.fetchall():
                cur.execute(f"KILL {int(row['ID'])}")
        poll(lambda: not waiting_for_space(primary), 30, "the killed write to end")
        filler.unlink()
        primary.close()
        dump = _dump(lab)
        assert f"GTID {remnant} trans" in dump, dump[-3000:]  # cut after its GTID event, as in the soak
        run(sql(lab, "db2"), "STOP SLAVE")
        run(sql(lab, "db2"), "RESET SLAVE ALL")
        run(sql(lab, "db2"), "SET GLOBAL read_only = OFF")
        keeper.start_truncate(TruncateErrant("db2", (), ActionReason.REPAIR_UNACKNOWLEDGED),
                              lambda: db2.gtid_positions().history)
        poll(lambda: not keeper.view().running, 120, "the first repair")
        first = keeper.status()
        print(f"\nfirst repair: {first}\n{dump[-2500:]}")
        assert first["gave_up"] == "" and first["last"]["abandoned"] == str(remnant), first
        assert rows(lab, "db1") == acknowledged

        # db1 rejoins db2 and applies its commits: seqs past the remnant's, of server 2.
        db1.rejoin(primary_address(lab, "db2"), db2.gtid_positions().history, semi_sync_replica=True)
        keeper.on_serving()
        for n in range(3):
            run(sql(lab, "db2", account="app"), f"INSERT INTO app.t VALUES ({20 + n}, 'written by db2')")
        acknowledged = rows(lab, "db2")
        poll(lambda: rows(lab, "db1") == acknowledged, 30, "db1 to apply db2's rows")
        assert db2.gtid_positions().history.streams[(remnant.domain, 2)] > remnant.seq

        # Term 2: db1 primary again (by hand: no DDL of its own), db2 its semi-sync replica, which
        # stops receiving before db1's only commit of the term: it waits for its ack.
        primary_again_by_hand(lab, db1, db2)
        keeper.on_promoted()
        db2.repoint(primary_address(lab, "db1"), db1.gtid_positions().history, semi_sync_replica=True)
        keeper.on_serving()
        with contextlib.closing(sql(lab, "db1")) as conn:
            poll(lambda: one(conn, "SHOW STATUS LIKE 'Rpl_semi_sync_master_clients'")["Value"] == "1",
                 30, "db2 to be a semi-sync replica of db1")
        run(sql(lab, "db2"), "STOP SLAVE IO_THREAD")
        threading.Thread(target=commit, args=("INSERT INTO app.t VALUES (30, 'term 2, never acknowledged')",),
                         daemon=True).start()
        with contextlib.closing(sql(lab, "db1")) as conn:
            poll(lambda: one(conn, "SHOW STATUS LIKE 'Rpl_semi_sync_master_wait_sessions'")["Value"] == "1",
                 30, "term 2's commit to wait for its ack")
        keeper.on_fencing()
        assert keeper.fence_by_crash(), keeper.status()
        run(sql(lab, "db2"), "STOP SLAVE")
        run(sql(lab, "db2"), "RESET SLAVE ALL")
        run(sql(lab, "db2"), "SET GLOBAL read_only = OFF")
        assert db2.gtid_positions().history.streams[(remnant.domain, 1)] < remnant.seq  # term 1's

        keeper.start_truncate(TruncateErrant("db2", (), ActionReason.REPAIR_UNACKNOWLEDGED),
                              lambda: db2.gtid_positions().history)
        poll(lambda: not keeper.view().running, 120, "the second repair")
        second = keeper.status()
        print(f"\nsecond repair: {second}")
        assert second["gave_up"] == "" and second["retrying"] == "", second
        assert not keeper.view().awaiting_restart and lab.live_node("db1").process.alive()
        assert rows(lab, "db1") == acknowledged  # term 2's commit removed, nothing else
        assert db1.gtid_positions().history.errant_against(db2.gtid_positions().history) == ()
        excerpt = Path(second["saved_file"]).read_text()
        assert "@2='term 2, never acknowledged'" in excerpt, excerpt[-3000:]
        assert f"left out: {remnant}" in excerpt, excerpt[:3000]  # named, not saved as errant
        assert second["last"]["errant_before"] != "" and str(remnant) not in second["last"]["errant_before"]
        # Its file's read error was put down to it: no raw copy taken for a cut end that is not there.
        assert not list((tmp_path / "state").glob("*-binlog")), list((tmp_path / "state").iterdir())
        assert [kind for kind, _ in history] == ["repair", "repair"], history
        assert len(outcome) == 2 and "OK" not in outcome, outcome  # no client saw an OK
    finally:
        LabCluster.load(lab.directory).down()
        for mount in mounts:
            subprocess.run(["umount", str(mount)], check=False, capture_output=True)


def _dump(lab: LabCluster) -> str:
    datadir = Path(lab.node("db1").datadir)
    files = [str(datadir / name) for name in (datadir / "mysql-bin.index").read_text().split()]
    done = subprocess.run(["mariadb-binlog", files[-1]], capture_output=True, text=True, check=False)
    return done.stdout + done.stderr

"""The repair on a fenced primary whose data directory filled up (soak seed 204), on real MariaDB:
the commit mysqld could not finish writing to its binlog is saved once the disk is freed, never
cut out with a partial copy, and the repair never gives up for good meanwhile."""

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
from dbfence.mysql.connection import DbConnection
from dbfence.mysql.gtid import Gtid
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import actions, one, poll, run, sql
from tests.mysql.test_mysql_repair_lab import NEVER_FALLS_BACK, cut_replica_and_promote_it, lab_keeper, rows

PAGE = 4096  # a tmpfs file grows by pages: a full one takes a write up to its last page's end


def binlog_position(conn: DbConnection) -> int:
    return int(one(conn, "SHOW MASTER STATUS")["Position"])


def pad_binlog(conn: DbConnection, reserve: int, target: int = 10, window: tuple[int, int] = (1, 18)) -> int:
    """Commit padding rows until, ``reserve`` bytes further, the binlog's last page has ``target``
    bytes left (any within ``window`` will do). By default the transaction after those bytes has
    its GTID event (a 19-byte header) cut inside when the disk is full. Returns the bytes left."""
    position, next_id = binlog_position(conn), 100
    for _ in range(6):
        room = (-position - reserve) % PAGE
        if window[0] <= room <= window[1]:
            return room
        # A padding group is `overhead + n` bytes (n: four digits, the statement keeps its length)
        run(conn, f"INSERT INTO app.t VALUES ({next_id}, REPEAT('p', 1000))")
        overhead = binlog_position(conn) - position - 1000
        position, next_id = binlog_position(conn), next_id + 1
        n = (PAGE - target - reserve - position % PAGE - overhead) % PAGE
        n += PAGE if n < 1000 else 0
        run(conn, f"INSERT INTO app.t VALUES ({next_id}, REPEAT('p', {n:04d}))")
        position, next_id = binlog_position(conn), next_id + 1
    raise AssertionError(f"could not pad the binlog to a page end (at {position})")


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to its last page."""
    filler = directory / "dbfence-filler"
    with open(filler, "wb", buffering=0) as out:
        for chunk in (1 << 20, PAGE):
            with contextlib.suppress(OSError):  # ENOSPC: full, as wanted
                while True:
                    out.write(b"\0" * chunk)
    return filler


def binlog_dump(lab: LabCluster) -> str:
    datadir = Path(lab.node("db1").datadir)
    files = [str(datadir / name) for name in (datadir / "mysql-bin.index").read_text().split()]
    done = subprocess.run(["mariadb-binlog", *files[-1:]], capture_output=True, text=True, check=False)
    return "\n".join([f"exit {done.returncode}, stderr: {done.stderr.strip()}",
                      *(line for line in done.stdout.splitlines() if "\tGTID " in line or "\tXid" in line)])


@pytest.mark.parametrize("then", ["disk freed", "write killed", "mysqld killed"])
def test_a_commit_a_full_disk_cut_short_is_waited_for_and_saved_or_its_abandoned_write_left_out(
        lab_factory: LabFactory, tmp_path: Path, then: str) -> None:
    """"disk freed": mysqld finishes the write (within a minute), the repair saves both whole.
    "write killed": the fence's KILL ends the wait for space; the write fails, the engine rolls
    the commit back and the binlog ends inside it for good: saved as far as it can be read.
    "mysqld killed": the fence by crash (a commit waits for its ack) kills mysqld inside that write:
    the files recovery reads are kept byte for byte, the rest saved, mysqld started."""
    if os.geteuid() != 0:
        pytest.skip("a small disk of its own takes a tmpfs mount (root)")
    lab = lab_factory(mysql_count=2)
    mounts: list[Path] = []
    try:
        move_datadir_to_tmpfs(lab, "db1", "64m", mounts)
        mariadb_servers.open_for_writes(lab.node("db1"), lab.accounts["agent"])
        actions(lab, "db1").set_semi_sync_primary(NEVER_FALLS_BACK)
        actions(lab, "db2").set_semi_sync_replica(True)
        primary = sql(lab, "db1")
        poll(lambda: one(primary, "SHOW STATUS LIKE 'Rpl_semi_sync_master_clients'")["Value"] == "1",
             30, "db2 to be a semi-sync replica of db1")
        run(primary, "CREATE TABLE app.t (id INT PRIMARY KEY, note VARCHAR(6000))")
        run(primary, "INSERT INTO app.t VALUES (1, 'acknowledged')")
        history: list[tuple[str, str]] = []
        keeper = lab_keeper(lab, tmp_path, history)
        keeper.retry_max = 4.0  # MariaDB tries its write again a minute after the disk is freed
        keeper.on_fencing()
        poll(lambda: keeper.view().evidence_problem is None, 30, "the fencing evidence")

        # Seed 204's shape: two errant commits, the first whole in the binlog (it waits for its
        # ack), the second cut inside its GTID event by the full disk.
        before = binlog_position(primary)
        run(primary, "INSERT INTO app.t VALUES (9, 'waits for its ack')")  # the first one's size
        room = pad_binlog(primary, reserve=binlog_position(primary) - before)
        acknowledged = rows(lab, "db1")
        poll(lambda: rows(lab, "db2") == acknowledged, 30, "db2 to apply every acknowledged row")
        run(sql(lab, "db2"), "STOP SLAVE IO_THREAD")
        outcome: list[object] = []

        def commit(statement: str) -> None:
            try:  # waits for disk space, then for its ack
                run(sql(lab, "db1", account="app", read_timeout=600), statement)
                outcome.append("OK")
            except pymysql.MySQLError as exc:
                outcome.append(exc.args[0])

        threading.Thread(target=commit, args=("INSERT INTO app.t VALUES (2, 'waits for its ack')",),
                         daemon=True).start()
        poll(lambda: one(primary, "SHOW STATUS LIKE 'Rpl_semi_sync_master_wait_sessions'")["Value"] == "1",
             30, "the first commit to wait for its ack")
        filler = fill(Path(lab.node("db1").datadir))
        threading.Thread(target=commit, args=("INSERT INTO app.t VALUES (4, 'cut by a full disk')",),
                         daemon=True).start()
        poll(lambda: waiting_for_space(primary), 30, "the second commit to wait for disk space")
        last = Gtid.parse(str(one(primary, "SELECT @@gtid_binlog_pos AS p")["p"]))
        errant = f"{Gtid(last.domain, last.server_id, last.seq - 1)}..{last}"
        print(f"\nbinlog room {room} bytes; {errant} counted, the file ends inside {last}:")
        print(binlog_dump(lab))
        cut_replica_and_promote_it(lab)
        pid = lab.live_node("db1").pid
        if then == "mysqld killed":
            assert keeper.fence_by_crash()  # a commit waits for its ack: the fence crashes mysqld
            filler.unlink()
            keeper.start_truncate(TruncateErrant("db2", (), ActionReason.REPAIR_UNACKNOWLEDGED),
                                  lambda: actions(lab, "db2").gtid_positions().history)
            poll(lambda: not keeper.view().running, 120, "the repair of the killed mysqld")
            status = keeper.status()
            print(f"repair done: {status}")
            assert status["gave_up"] == status["retrying"] == "" and status["last"]["abandoned"], status
            saved = Path(status["saved_file"])
            assert "@2='waits for its ack'" in saved.read_text()
            assert "-- the binlog ends inside or before" in saved.read_text()
            raw = saved.with_name(f"{saved.stem}-binlog")
            assert sorted(f.name for f in raw.iterdir()) == ["mysql-bin.000002"], list(raw.iterdir())
            assert rows(lab, "db1") == acknowledged
            assert len(outcome) == 2 and "OK" not in outcome, outcome
            return

        keeper.start_truncate(TruncateErrant("db2", (errant,), ActionReason.REPAIR_UNACKNOWLEDGED),
                              lambda: actions(lab, "db2").gtid_positions().history)
        poll(lambda: keeper.status()["retrying"] or keeper.status()["gave_up"], 60, "the repair's first try")
        status = keeper.status()
        print(f"repair waiting: {status['retrying']}")
        assert status["running"] and status["gave_up"] == "", status  # seed 204: gave up for good
        assert "nothing removed" in status["retrying"] and "Event truncated" in status["retrying"], status
        assert lab.live_node("db1").pid == pid and waiting_for_space(primary)  # not killed
        assert not list((tmp_path / "state").glob("errant-*")) and history == []

        if then == "write killed":
            with primary.cursor() as cur:
                cur.execute("SELECT ID FROM information_schema.PROCESSLIST "
                            "WHERE STATE = 'Waiting for someone to free space'")
                for row in cur.fetchall():
                    cur.execute(f"KILL {int(row['ID'])}")  # as the fence does, the disk still full
            poll(lambda: not waiting_for_space(primary), 30, "the killed write to end")
        filler.unlink()  # "disk freed": mysqld finishes its write within a minute
        if then == "write killed":
            # Its commit is gone from the engine, its GTID still counted, the binlog cut in it.
            assert Gtid.parse(str(one(primary, "SELECT @@gtid_binlog_pos AS p")["p"])) == last
            assert one(primary, "SELECT COUNT(*) AS n FROM app.t WHERE id = 4")["n"] == 0
        poll(lambda: not keeper.view().running, 240, "the repair to save and truncate once the disk is freed")
        status = keeper.status()
        print(f"repair done: {status}\n{binlog_dump(lab)}")
        assert status["gave_up"] == "" and status["retrying"] == "", status
        excerpt = Path(status["saved_file"]).read_text()
        assert "@2='waits for its ack'" in excerpt, excerpt[-3000:]
        if then == "disk freed":
            assert f"GTID {last} trans" in excerpt and "@2='cut by a full disk'" in excerpt, excerpt[-3000:]
        else:
            note = f"-- the binlog ends inside or before {last}: its write was abandoned"
            assert note in excerpt, excerpt[:2000]
            assert status["last"]["abandoned"] == str(last) and f"ended inside {last}" in history[0][1]
        assert history and history[0][0] == "repair" and history[0][1].startswith(f"truncated {errant} in ")
        assert rows(lab, "db1") == acknowledged  # both removed, every acknowledged commit kept
        assert len(outcome) == 2 and "OK" not in outcome, outcome  # their clients never saw an OK
    finally:
        LabCluster.load(lab.directory).down()
        for mount in mounts:
            subprocess.run(["umount", str(mount)], check=False, capture_output=True)


def waiting_for_space(conn: DbConnection) -> bool:
    with conn.cursor() as cur:
        cur.execute("SHOW PROCESSLIST")
        return any(row["State"] == "Waiting for someone to free space" for row in cur.fetchall())

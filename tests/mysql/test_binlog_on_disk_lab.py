"""The binlog state of a SIGKILLed mysqld read from its files, on real MariaDB 10.11 (issue 16,
soak seed 443): equal to ``@@gtid_binlog_state`` just before the kill, across a rotated binlog
and with a commit that waits for its ack (in the binlog, not committed); crash recovery then
leaves at most that (it cuts the waiting commit). Where the error log is, remembered with the
binlog's location, is mysqld's own ``@@log_error``."""

from __future__ import annotations

from pathlib import Path

from dbfence.agent.binlog_tail_saver import BinlogTailSaver
from dbfence.lab.fault_model import exited
from dbfence.lab.wait import wait_until
from dbfence.mysql.binlog_on_disk import binlog_state_on_disk
from dbfence.mysql.gtid import GtidState
from dbfence.mysql.repair import start_mysqld
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import actions, one, recovery_control, run, sql
from tests.mysql.test_mysql_repair_lab import commit_waiting_for_an_ack, lossless_pair, rows


def test_the_state_read_from_a_killed_mysqlds_files_is_what_it_said_before_the_kill(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    lab = lossless_pair(lab_factory)
    node = lab.node("db1")
    saver = BinlogTailSaver(state_dir=tmp_path / "state", node="db1", mysql=actions(lab, "db1"),
                            tool="mariadb-binlog")
    saver.remember()
    assert saver.location is not None and saver.error_log == Path(node.log_error)
    primary = sql(lab, "db1")
    run(primary, "INSERT INTO app.t VALUES (10, 'before the rotation')")
    # Streams of another domain and another server (as replication applies them), before the
    # rotation: only the next file's Gtid list has them (wrapped over lines by mariadb-binlog).
    run(primary, "SET SESSION gtid_domain_id = 1")
    run(primary, "INSERT INTO app.t VALUES (12, 'domain 1')")
    run(primary, "SET SESSION gtid_domain_id = 0, SESSION server_id = 9")
    run(primary, "INSERT INTO app.t VALUES (13, 'server 9')")
    primary.close()
    primary = sql(lab, "db1")
    run(primary, "FLUSH BINARY LOGS")  # the last file's Gtid list now stands for the older ones
    run(primary, "INSERT INTO app.t VALUES (11, 'after the rotation')")
    server_id = int(one(primary, "SELECT @@server_id AS id")["id"])
    primary.close()
    writer, outcome = commit_waiting_for_an_ack(lab)  # in the binlog, waiting: counted
    primary = sql(lab, "db1")
    before = GtidState.parse(str(one(primary, "SHOW GLOBAL VARIABLES LIKE 'gtid_binlog_state'")["Value"]))
    primary.close()
    lab.kill_mysql("db1")
    wait_until(exited(node.process.alive), timeout=60, what="db1's mysqld to die")
    writer.join(10)

    disk = binlog_state_on_disk("mariadb-binlog", *saver.location)
    print(f"\nbefore the kill: {before}; on disk: {disk.state} ({disk.file.name}, server {disk.server_id})")
    assert disk.state == before and disk.server_id == server_id
    assert {(g.domain, g.server_id) for g in disk.state.gtids} == {(0, 1), (0, 9), (1, 1)}

    # Crash recovery (the repair's start: init_rpl_role = SLAVE) cuts the commit that waited.
    start_mysqld(recovery_control(lab, "db1"), actions(lab, "db1"))
    primary = sql(lab, "db1")
    after = GtidState.parse(str(one(primary, "SELECT @@gtid_binlog_state AS s")["s"]))
    primary.close()
    assert all(after.streams.get(stream, 0) <= seq for stream, seq in disk.state.streams.items())
    assert set(after.streams) <= set(disk.state.streams)
    assert after != disk.state, "recovery cut nothing: the waiting commit was committed?"
    assert (2, "never acknowledged") not in rows(lab, "db1") and outcome and outcome[0] != "OK"

"""A repoint on a replica whose data directory is full (issue 16, soak seed 432 burst 8), on
real MariaDB: refused without a change while the disk is full, then the replica follows its
primary within seconds of the disk being freed, not a minute (mysys's wait for free space)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from dbfence.lab.cluster import LabCluster
from dbfence.lab.fault_labs import move_datadir_to_tmpfs
from dbfence.mysql.errors import RelayLogDiskFullError
from dbfence.mysql.relay_log_room import relay_log_directory
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import actions, one, poll, primary_address, run, sql
from tests.mysql.test_mysql_repair_full_disk_lab import fill

BACKLOG_ROWS = 2  # of 1 MiB each: the new IO thread's first fetch, far more than a full disk leaves
FOLLOWS_WITHIN_S = 20.0  # MariaDB's IO thread on a full disk sleeps 60 s after space returns

CONFIG = ("Master_Host", "Master_Port", "Master_User", "Using_Gtid", "Slave_IO_Running",
          "Slave_SQL_Running", "Relay_Log_File", "Gtid_IO_Pos")


def replication_config(lab: LabCluster, name: str) -> dict[str, Any]:
    conn = sql(lab, name)
    try:
        status = one(conn, "SHOW SLAVE STATUS")
        return {**{key: status[key] for key in CONFIG},
                "read_only": one(conn, "SELECT @@read_only AS r")["r"]}
    finally:
        conn.close()


def count(lab: LabCluster, name: str) -> int:
    conn = sql(lab, name)
    try:
        return int(one(conn, "SELECT COUNT(*) AS n FROM app.r")["n"])
    finally:
        conn.close()


def test_the_relay_log_directory_is_the_basename_s_or_the_data_directory() -> None:
    assert relay_log_directory("/data/db/relay-bin", "/data/db/") == Path("/data/db")
    assert relay_log_directory("/logs/relay/relay-bin", "/data/db/") == Path("/logs/relay")
    assert relay_log_directory("relay/relay-bin", "/data/db/") == Path("/data/db/relay")
    assert relay_log_directory("", "/data/db/") == Path("/data/db")


def test_a_repoint_on_a_full_disk_is_refused_unchanged_then_follows_within_seconds_of_room(
        lab_factory: LabFactory) -> None:
    if os.geteuid() != 0:
        pytest.skip("a small disk of its own takes a tmpfs mount (root)")
    lab = lab_factory(mysql_count=2)
    mounts: list[Path] = []
    try:
        move_datadir_to_tmpfs(lab, "db2", "64m", mounts)
        primary, db1, db2 = sql(lab, "db1"), actions(lab, "db1"), actions(lab, "db2")
        replica = sql(lab, "db2")
        base = one(replica, "SELECT @@relay_log_basename AS b, @@datadir AS d")
        print(f"\nMariaDB's relay_log_basename {base['b']!r}, datadir {base['d']!r}")
        run(primary, "CREATE TABLE app.r (id INT PRIMARY KEY, pad LONGTEXT)")
        run(primary, "INSERT INTO app.r VALUES (0, '')")
        poll(lambda: count(lab, "db2") == 1, 30, "db2 to follow db1")
        # Seed 432's shape: the old source is gone (its IO thread stopped), the new primary has
        # written since, and the replica's disk is full when it is repointed.
        run(replica, "STOP SLAVE IO_THREAD")
        replica.close()
        for n in range(1, BACKLOG_ROWS + 1):
            run(primary, "INSERT INTO app.r VALUES (%s, REPEAT('x', 1 << 20))", (n,))
        filler = fill(Path(lab.node("db2").datadir))
        before = replication_config(lab, "db2")

        with pytest.raises(RelayLogDiskFullError, match=r"relay log's disk is full.*60 s"):
            db2.repoint(primary_address(lab, "db1"), db1.gtid_positions().binlog_state,
                        semi_sync_replica=False)
        assert replication_config(lab, "db2") == before  # refused before changing anything

        filler.unlink()
        freed = time.monotonic()
        # As the agent's loop does: the core asks again next round, now with room.
        db2.repoint(primary_address(lab, "db1"), db1.gtid_positions().binlog_state,
                    semi_sync_replica=False)
        run(primary, "INSERT INTO app.r VALUES (100, 'after the repoint')")
        poll(lambda: count(lab, "db2") == BACKLOG_ROWS + 2, FOLLOWS_WITHIN_S,
             "db2 to receive the backlog and the new write")
        print(f"db2 followed db1 {time.monotonic() - freed:.2f} s after the disk was freed")
        status = db2.replica_status()
        assert status is not None and status.last_io_errno == 0
        assert status.primary_port == lab.node("db1").port
    finally:
        LabCluster.load(lab.directory).down()
        for mount in mounts:
            subprocess.run(["umount", str(mount)], check=False, capture_output=True)

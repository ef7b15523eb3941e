"""A repoint on a replica whose data directory is full (issue 16, soak seed 432 burst 8), on
real MariaDB: refused without a change while the disk is full, then the replica follows its
primary within seconds of the disk being freed, not a minute (mysys's wait for free space)."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dbfence.agent.actions import ActionReason, Repoint
from dbfence.agent.sensors import DcsView
from dbfence.lab.cluster import LabCluster
from dbfence.lab.fault_labs import move_datadir_to_tmpfs
from dbfence.locks.model import ClusterSnapshot, MemberEntry, MemberRecord
from dbfence.mysql.errors import RelayLogDiskFullError
from dbfence.mysql.relay_log_room import relay_log_directory
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import actions, one, poll, primary_address, run, sql
from tests.mysql.test_executor_repoint_lab import executor_on
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


def full_replica_with_backlog(lab: LabCluster, mounts: list[Path]) -> Path:
    """Seed 432's shape on db2 (a replica on a 64 MiB tmpfs): its old source gone (IO thread
    stopped), the primary written to since, and db2's disk full. Returns the filler."""
    move_datadir_to_tmpfs(lab, "db2", "64m", mounts)
    primary, replica = sql(lab, "db1"), sql(lab, "db2")
    try:
        base = one(replica, "SELECT @@relay_log_basename AS b, @@datadir AS d")
        print(f"\nMariaDB's relay_log_basename {base['b']!r}, datadir {base['d']!r}")
        run(primary, "CREATE TABLE app.r (id INT PRIMARY KEY, pad LONGTEXT)")
        run(primary, "INSERT INTO app.r VALUES (0, '')")
        poll(lambda: count(lab, "db2") == 1, 30, "db2 to follow db1")
        run(replica, "STOP SLAVE IO_THREAD")
        for n in range(1, BACKLOG_ROWS + 1):
            run(primary, "INSERT INTO app.r VALUES (%s, REPEAT('x', 1 << 20))", (n,))
    finally:
        primary.close()
        replica.close()
    return fill(Path(lab.node("db2").datadir))


@contextlib.contextmanager
def full_replica_lab(lab_factory: LabFactory) -> Iterator[tuple[LabCluster, Path]]:
    """A two-node lab with db2 as :func:`full_replica_with_backlog` leaves it, and its filler;
    afterwards the lab is stopped and the tmpfs unmounted."""
    if os.geteuid() != 0:
        pytest.skip("a small disk of its own takes a tmpfs mount (root)")
    lab = lab_factory(mysql_count=2)
    mounts: list[Path] = []
    try:
        yield lab, full_replica_with_backlog(lab, mounts)
    finally:
        LabCluster.load(lab.directory).down()
        for mount in mounts:
            subprocess.run(["umount", str(mount)], check=False, capture_output=True)


def follows_within_seconds(lab: LabCluster, freed: float) -> None:
    """db2 receives the backlog and a new write of db1 well within mysqld's 60 s wait."""
    primary = sql(lab, "db1")
    run(primary, "INSERT INTO app.r VALUES (100, 'after the repoint')")
    primary.close()
    poll(lambda: count(lab, "db2") == BACKLOG_ROWS + 2, FOLLOWS_WITHIN_S,
         "db2 to receive the backlog and the new write")
    print(f"db2 followed db1 {time.monotonic() - freed:.2f} s after the disk was freed")
    status = actions(lab, "db2").replica_status()
    assert status is not None and status.last_io_errno == 0
    assert status.primary_port == lab.node("db1").port


def test_a_repoint_on_a_full_disk_is_refused_unchanged_then_follows_within_seconds_of_room(
        lab_factory: LabFactory) -> None:
    with full_replica_lab(lab_factory) as (lab, filler):
        db1, db2 = actions(lab, "db1"), actions(lab, "db2")
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
        follows_within_seconds(lab, freed)


def test_the_agent_s_repoint_fails_logged_once_while_the_disk_is_full_then_follows(
        lab_factory: LabFactory, caplog: pytest.LogCaptureFixture) -> None:
    """The executor's Repoint action, as the core asks for it every round: a failure with the
    reason in the log (once, then counted) and in /status's action_errors, then success."""
    with full_replica_lab(lab_factory) as (lab, filler):
        executor, dcs = executor_on(lab, "db2", source_read_budget=2.0)
        try:
            node = lab.node("db1")
            record = MemberRecord(node="db1", role="primary", healthy=True, mysql_host=node.host,
                                  mysql_port=node.port)
            dcs.latest = DcsView(at=time.monotonic(), snapshot=ClusterSnapshot(
                cluster="repoint-test", index=1, lock=None, members=(MemberEntry("m/db1", record, ""),)))
            repoint = Repoint("db1", False, ActionReason.FOLLOW_PRIMARY)
            before = replication_config(lab, "db2")
            with caplog.at_level(logging.INFO, logger="dbfence.agent"):
                for _ in range(3):
                    assert not executor.run(repoint)
                    assert executor.backoff.after_round((repoint,)) <= 2.0  # the loop's back-off
                lines = [r.getMessage() for r in caplog.records if '"Repoint"' in r.getMessage()]
            print("\n".join(lines))
            assert len(lines) == 1 and "RelayLogDiskFullError" in lines[0], lines
            assert "relay log's disk is full" in executor.last_error["Repoint"]
            assert replication_config(lab, "db2") == before

            filler.unlink()
            freed = time.monotonic()
            assert executor.run(repoint), executor.last_error
            assert "Repoint" not in executor.last_error
            follows_within_seconds(lab, freed)
        finally:
            executor.lock.close()

"""A promotion's token write under lossless semi-sync, on a real mysqld: the executor switches
the primary side on first when the core asks for it, so the write waits for a replica's ack (in
doubt, removable by crash recovery) instead of committing at once, acknowledged by nobody.

The case: a node promoted without a source (a restarted former primary that wins again; its
mysqld starts with semi-sync off, and no Promote switches it on)."""

from __future__ import annotations

from dbfence.agent.actions import ActionReason, WriteFencingToken
from dbfence.lab.cluster import LabCluster
from dbfence.mysql.actions import SemiSyncSettings
from dbfence.mysql.schema import SCHEMA
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import actions, one, poll, sql
from tests.mysql.test_executor_repoint_lab import executor_on


def token_on(lab_node: str, lab: LabCluster) -> int | None:
    conn = sql(lab, lab_node)
    try:
        row = one(conn, "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = %s "
                        "AND table_name = 'fencing'", (SCHEMA,))
        if not row["n"]:
            return None
        token = one(conn, f"SELECT MAX(token) AS t FROM {SCHEMA}.fencing")["t"]
        return None if token is None else int(token)
    finally:
        conn.close()


def test_the_lossless_token_write_waits_for_a_replica_with_semi_sync_switched_on(
        lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=2)
    db1, db2 = actions(lab, "db1"), actions(lab, "db2")
    db1.set_semi_sync_primary(None)  # as a restarted mysqld starts
    db2.set_semi_sync_replica(True)
    replica = sql(lab, "db2")
    replica.cursor().execute("STOP SLAVE IO_THREAD")  # no ack yet: not following this holder yet
    executor, _ = executor_on(lab, "db1", source_read_budget=0.5)
    executor.semi_sync = SemiSyncSettings(timeout_ms=600_000)  # never falls back during the test
    try:
        write = WriteFencingToken(7, ActionReason.PROMOTION, semi_sync=True)
        assert executor.run(write), executor.last_error
        conn = sql(lab, "db1")
        try:
            assert one(conn, "SELECT @@global.rpl_semi_sync_master_enabled AS on_")["on_"] == 1
            poll(lambda: int(one(conn, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_wait_sessions'")
                             ["Value"]) == 1, 10, "the token write waiting for an ack")
        finally:
            conn.close()
        assert token_on("db1", lab) != 7  # not committed: nobody acknowledged it
        replica.cursor().execute("START SLAVE IO_THREAD")  # follows the holder and acknowledges
        poll(lambda: token_on("db1", lab) == 7 and token_on("db2", lab) == 7, 10,
             "the token committed once the replica acknowledged it")
    finally:
        executor.lock.close()
        replica.close()

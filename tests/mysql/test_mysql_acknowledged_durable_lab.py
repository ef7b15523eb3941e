"""Soak seed 442 on real MariaDB 10.11: a commit acknowledged to its client survives the crash of
the primary that wrote it, even when it crashes within the same millisecond.

The lost write: the primary's commit was acknowledged (its semi-sync replica had it in the relay
log, unapplied: the soak's lagging-replica fault held the applier) and the client told OK; the
primary's mysqld was killed at once, and its recovery as a semi-sync replica
(``--init-rpl-role=SLAVE``, which removes a former primary's unacknowledged tail) cut that commit
too, because InnoDB had not made it durable yet (``innodb_flush_log_at_trx_commit = 1`` leaves a
commit's durability to the binlog and flushes it about a second later). The replica's mysqld was
killed next, and its relay log went with the repoint that followed: nobody held the write.
``innodb_flush_log_at_trx_commit = 3`` (the lab's servers, and the preflight's requirement in
lossless mode on MariaDB) makes every commit durable in InnoDB before its OK, so recovery keeps it
and removes only what no client was told of."""

from __future__ import annotations

import contextlib
from pathlib import Path

from dbfence.mysql.repair import kill_mysqld, start_mysqld
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import actions, one, poll, recovery_control, run, sql
from tests.mysql.test_mysql_repair_lab import lossless_pair, rows


def test_a_commit_acknowledged_just_before_a_kill_9_survives_the_semi_sync_replica_recovery(
        lab_factory: LabFactory) -> None:
    lab = lossless_pair(lab_factory)
    with contextlib.closing(sql(lab, "db1")) as conn:
        assert one(conn, "SELECT @@global.innodb_flush_log_at_trx_commit AS v")["v"] == 3
    run(sql(lab, "db2"), "STOP SLAVE SQL_THREAD")  # db2 receives and acknowledges, applies nothing
    with contextlib.closing(sql(lab, "db1", account="app")) as app:
        run(app, "INSERT INTO app.t VALUES (2, 'acknowledged, then the primary died')")  # OK: acknowledged
        kill_mysqld(Path(lab.node("db1").pid_file))  # at once, well inside InnoDB's one-second flush
    db1 = actions(lab, "db1")
    start_mysqld(recovery_control(lab, "db1"), db1)  # --init-rpl-role=SLAVE: the unacknowledged tail goes

    # Before issue 16's fix (innodb_flush_log_at_trx_commit = 1) the acknowledged row was gone here.
    assert rows(lab, "db1") == [(1, "acknowledged"), (2, "acknowledged, then the primary died")]
    with contextlib.closing(sql(lab, "db2")) as conn:
        run(conn, "START SLAVE SQL_THREAD")
    poll(lambda: len(rows(lab, "db2")) == 2, 30, "db2 to apply the row it acknowledged")

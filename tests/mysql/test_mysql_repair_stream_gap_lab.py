"""A former primary primary again after a rejoin, whose new term reached no replica, repaired by the
ordinary truncation (mysqld running), on real MariaDB: its stream of server 1 has a gap where the
other primary wrote in the same domain, and the excerpt must not count that gap as missing."""

from __future__ import annotations

import contextlib
from pathlib import Path

from dbfence.mysql.gtid import Gtid
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import actions, one, poll, primary_address, run, sql
from tests.mysql.test_mysql_repair_lab import (
    NEVER_FALLS_BACK,
    commit_waiting_for_an_ack,
    cut_replica_and_promote_it,
    lossless_pair,
    primary_again_by_hand,
    repair,
    rows,
)


def test_a_second_terms_unacknowledged_commit_is_truncated_across_the_other_primarys_seqs(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    lab = lossless_pair(lab_factory)
    db1, db2 = actions(lab, "db1"), actions(lab, "db2")
    db1.fence()
    db2.promote(semi_sync=NEVER_FALLS_BACK)
    db1.rejoin(primary_address(lab, "db2"), db2.gtid_positions().history, semi_sync_replica=True)
    for n in range(3):
        run(sql(lab, "db2", account="app"), f"INSERT INTO app.t VALUES ({20 + n}, 'written by db2')")
    acknowledged = rows(lab, "db2")
    poll(lambda: rows(lab, "db1") == acknowledged, 30, "db1 to apply db2's rows")
    # db1 primary again by hand (no DDL of its own), db2 its semi-sync replica again.
    primary_again_by_hand(lab, db1, db2)
    db2.repoint(primary_address(lab, "db1"), db1.gtid_positions().history, semi_sync_replica=True)
    with contextlib.closing(sql(lab, "db1")) as conn:
        poll(lambda: one(conn, "SHOW STATUS LIKE 'Rpl_semi_sync_master_clients'")["Value"] == "1",
             30, "db2 to be a semi-sync replica of db1")
    writer, outcome = commit_waiting_for_an_ack(lab)  # db2 stops receiving first: it gets nothing
    waiting = Gtid.parse(str(db1.gtid_positions().binlog_pos))
    # The commit stays in doubt, as the agent's fence by crash keeps it (a KILL of its session
    # would commit it, durable at once with innodb_flush_log_at_trx_commit = 3).
    cut_replica_and_promote_it(lab)
    assert db2.gtid_positions().history.streams[(waiting.domain, 1)] < waiting.seq - 1  # a gap between

    result = repair(lab, tmp_path)
    writer.join(10)
    print(f"\nrepair across a gap: {result}")
    assert result.succeeded and result.errant_before.endswith(str(waiting)), result
    assert "@2='never acknowledged'" in result.saved_file.read_text()
    assert rows(lab, "db1") == acknowledged
    assert outcome and outcome[0] != "OK", outcome

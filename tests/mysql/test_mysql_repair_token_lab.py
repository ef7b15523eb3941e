"""Issue 16 on real MariaDB 10.11: a fencing-token write that committed unacknowledged (a promotion
nobody could follow ends its ack wait) survives crash recovery. The repair discards it, proven by its
content, and the node rejoins; anything else errant next to it still makes the repair give up."""

from __future__ import annotations

import contextlib
import sys
from functools import partial
from pathlib import Path

import pytest

from dbfence.lab.cluster import LabCluster
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.gtid import ErrantRange
from dbfence.mysql.repair import MysqldControl, RepairResult, truncate_unacknowledged
from dbfence.mysql.token_discard import only_own_token_writes
from dbfence.mysql.token_writer import FencingTokenWriter
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import actions, one, poll, primary_address, run, sql
from tests.mysql.test_mysql_repair_lab import NEVER_FALLS_BACK, innodb_log_flushed, lossless_pair, rows

NEVER_REPLICATED = "(server 2 never replicated to the primary in domain 0)"


def history_rows(lab: LabCluster, name: str) -> list[tuple[int, int]]:
    with contextlib.closing(sql(lab, name)) as conn, conn.cursor() as cur:
        cur.execute("SELECT token, server_id FROM dbfence.fencing_history ORDER BY token")
        return [(int(row["token"]), int(row["server_id"])) for row in cur.fetchall()]


def token_row(lab: LabCluster, name: str) -> tuple[int, int] | None:
    record = actions(lab, name).read_fencing_token()
    return None if record is None else (record.token, record.server_id)


def db2_promoted_after_db1s_token_5(lab_factory: LabFactory
                                    ) -> tuple[LabCluster, MysqlActions, MysqlActions]:
    """A lossless pair whose primary db1 writes token 5, which db2 applies; db1 then goes
    read-only and db2 is promoted (semi-sync that never falls back). Returns the lab and both
    nodes' adapters."""
    lab = lossless_pair(lab_factory)
    db1, db2 = actions(lab, "db1"), actions(lab, "db2")
    db1.ensure_schema()
    db1.write_fencing_token(5, "agent-db1")
    poll(lambda: token_row(lab, "db2") == (5, 1), 30, "db2 to apply db1's token")
    run(sql(lab, "db1"), "SET GLOBAL read_only = ON")
    db2.promote(semi_sync=NEVER_FALLS_BACK)
    return lab, db1, db2


def db2_token_committed_unacknowledged(lab_factory: LabFactory, tokens: tuple[int, ...] = (7,)
                                       ) -> tuple[LabCluster, MysqlActions, int]:
    """db1 (lossless primary) writes token 5, which db2 receives; db2 is promoted while db1 steps
    down and does not follow it, so db2's token 7 (and any later ``tokens``: promoted again,
    followed by nobody again) waits for an ack until the writer ends the wait (as the agent's
    TokenWriter does): it commits in the engine, unacknowledged. Returns the lab, db2's adapter and
    the first token's seq."""
    lab, _, db2 = db2_promoted_after_db1s_token_5(lab_factory)
    writer = FencingTokenWriter(db2, "agent-db2", wait_s=60.0, ack_wait_s=1.0)
    first = ""
    for token in tokens:
        assert not writer.ensure(token)
        poll(partial(writer.ensure, token), 30, "the token write's ack wait to be ended")
        assert token_row(lab, "db2") == (token, 2)
        first = first or str(db2.gtid_positions().binlog_pos)
    with contextlib.closing(sql(lab, "db2")) as conn:
        pos = first
        assert pos.startswith("0-2-"), pos  # server 2's first transaction: the token
        # Durable in InnoDB, as about a second after the KILL (before that, recovery still removes it).
        poll(lambda: innodb_log_flushed(conn), 30, "InnoDB to flush its redo log")
    return lab, db2, int(pos.split("-")[2])


def db1_primary_again_with_more_writes(lab: LabCluster) -> None:
    """db2 is fenced (read-only); db1 is primary again (no replica: semi-sync off) and writes its own
    token 9 and client rows the repair must not need."""
    actions(lab, "db2").fence()
    db1 = actions(lab, "db1")
    db1.set_semi_sync_primary(None)
    db1.set_read_only(False)
    db1.write_fencing_token(9, "agent-db1")
    run(sql(lab, "db1", account="app"), "INSERT INTO app.t VALUES (2, 'after the failover')")
    run(sql(lab, "db1", account="app"), "INSERT INTO app.t VALUES (3, 'and another')")


def errant_against_db1(lab: LabCluster) -> tuple[ErrantRange, ...]:
    primary = actions(lab, "db1").gtid_positions().history
    return actions(lab, "db2").gtid_positions().history.errant_against(primary)


def repair_db2(lab: LabCluster, tmp_path: Path) -> RepairResult:
    node = lab.node("db2")
    control = MysqldControl(
        pid_file=Path(node.pid_file), start_timeout=120.0,
        start_command=[sys.executable, "-m", "dbfence", "lab", "start-mysql", "--dir", str(lab.directory),
                       "--recovery", "db2"])
    return truncate_unacknowledged(actions(lab, "db2"), control,
                                   lambda: actions(lab, "db1").gtid_positions().history,
                                   tmp_path / "errant-db2.sql", "-- dbfence test excerpt\n")


@pytest.mark.parametrize("tokens", [(7,), (7, 8)], ids=["one token", "two terms nobody followed"])
def test_a_token_committed_unacknowledged_is_discarded_and_the_node_rejoins(
        lab_factory: LabFactory, tmp_path: Path, tokens: tuple[int, ...]) -> None:
    lab, db2, token_seq = db2_token_committed_unacknowledged(lab_factory, tokens)
    db1_primary_again_with_more_writes(lab)
    assert history_rows(lab, "db2") == [(5, 1)] + [(token, 2) for token in tokens]
    last_seq = token_seq + len(tokens) - 1
    # What the errant check tells the core before any repair: only its own tokens (no evidence needed).
    assert only_own_token_writes(db2, errant_against_db1(lab)) == ""

    state_before = db2.gtid_positions().binlog_state
    result = repair_db2(lab, tmp_path)
    print(f"\nrepair: {result}")
    assert result.succeeded, result  # before issue 16's fix: "0-2-... survived crash recovery"
    # The binlog state keeps every other stream (soak seed 461: emptied by RESET MASTER, the node
    # looked to its peers as if it lacked db1's writes, and lost every race after).
    kept = {stream: seq for stream, seq in state_before.streams.items() if stream != (0, 2)}
    assert dict(db2.gtid_positions().binlog_state.streams) == kept and kept, (state_before, kept)
    assert result.errant_before == f"0-2-*..0-2-{last_seq} {NEVER_REPLICATED}"
    gtids = ",".join(f"0-2-{seq}" for seq in range(token_seq, last_seq + 1))
    assert result.discarded == f"{gtids} (fencing token(s) {', '.join(map(str, tokens))})", result
    assert "GTID 0-2-" in result.saved_file.read_text()  # the token is kept in the excerpt
    db1_state = actions(lab, "db1").gtid_positions().history
    assert db2.gtid_positions().history.errant_against(db1_state) == ()
    assert history_rows(lab, "db2") == [(5, 1)]  # the token's history row is gone
    assert token_row(lab, "db2") == (tokens[-1], 2)  # the fencing row: overwritten as db1's token replicates
    with contextlib.closing(sql(lab, "db2")) as conn:
        assert one(conn, "SELECT @@global.read_only AS ro")["ro"] == 1  # still fenced

    db2.rejoin(primary_address(lab, "db1"), db1_state, semi_sync_replica=False)
    expected = [(1, "acknowledged"), (2, "after the failover"), (3, "and another")]
    poll(lambda: rows(lab, "db2") == expected, 30, "db2 to replicate db1's rows")
    assert token_row(lab, "db2") == (9, 1) == token_row(lab, "db1")
    assert history_rows(lab, "db2") == [(5, 1), (9, 1)] == history_rows(lab, "db1")
    status = db2.replica_status()
    assert status is not None and status.problem == "", status
    run(sql(lab, "db1", account="app"), "INSERT INTO app.t VALUES (4, 'replicated after the rejoin')")
    poll(lambda: (4, "replicated after the rejoin") in rows(lab, "db2"), 30, "db2 to keep replicating")


def test_a_committed_client_transaction_next_to_the_token_still_gives_up(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    lab, db2, token_seq = db2_token_committed_unacknowledged(lab_factory)
    db2.set_semi_sync_primary(None)
    run(sql(lab, "db2", account="app"), "INSERT INTO app.t VALUES (8, 'committed on db2 alone')")
    with contextlib.closing(sql(lab, "db2")) as conn:
        poll(lambda: innodb_log_flushed(conn), 30, "InnoDB to flush its redo log")
    db1_primary_again_with_more_writes(lab)
    before = db2.gtid_positions()
    assert only_own_token_writes(db2, errant_against_db1(lab)) == (
        f"0-2-{token_seq + 1} is not a fencing-token write: it writes 'app.t', not only the fencing "
        "token's tables")

    result = repair_db2(lab, tmp_path)
    print(f"\nrepair: {result}")
    assert not result.succeeded and result.discarded == ""
    assert result.errant_after == f"0-2-*..0-2-{token_seq + 1} {NEVER_REPLICATED}"
    assert result.kept_why == (f"0-2-{token_seq + 1} is not a fencing-token write: it writes 'app.t', not "
                               "only the fencing token's tables"), result.kept_why
    after = db2.gtid_positions()  # nothing reset
    assert after.binlog_state == before.binlog_state and after.slave_pos == before.slave_pos
    assert history_rows(lab, "db2") == [(5, 1), (7, 2)]
    assert (8, "committed on db2 alone") in rows(lab, "db2")

"""The repair on real MariaDB 10.11: a commit that waited for a semi-sync ack on a fenced primary is
saved and truncated, never lost; a committed errant transaction is never removed."""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pymysql
import pytest

from dbfence.agent.actions import ActionReason, TruncateErrant
from dbfence.agent.gtid import BinlogState, GtidPosition
from dbfence.agent.repair_keeper import RepairKeeper
from dbfence.lab.cluster import LabCluster
from dbfence.mysql.actions import MysqlActions, SemiSyncSettings
from dbfence.mysql.connection import DbConnection
from dbfence.mysql.errors import MysqlAdapterError
from dbfence.mysql.gtid import GtidState
from dbfence.mysql.repair import MysqldControl, RepairResult, mysqld_running, truncate_unacknowledged
from dbfence.mysql.repair_evidence import load_evidence, read_evidence, save_evidence
from dbfence.mysql.token_writer import FencingTokenWriter
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import actions, one, poll, primary_address, run, sql

# Long enough never to fall back while a test waits; a test that wants a fallback sets less.
NEVER_FALLS_BACK = SemiSyncSettings(timeout_ms=600_000)


def lossless_pair(lab_factory: LabFactory, semi_sync: SemiSyncSettings = NEVER_FALLS_BACK) -> LabCluster:
    """db1 primary with AFTER_SYNC semi-sync, db2 its semi-sync replica, one acknowledged row."""
    lab = lab_factory(mysql_count=2)
    actions(lab, "db1").set_semi_sync_primary(semi_sync)
    actions(lab, "db2").set_semi_sync_replica(True)
    primary = sql(lab, "db1")
    poll(lambda: one(primary, "SHOW STATUS LIKE 'Rpl_semi_sync_master_clients'")["Value"] == "1",
         30, "db2 to be a semi-sync replica of db1")
    run(primary, "CREATE TABLE app.t (id INT PRIMARY KEY, note VARCHAR(40))")
    run(primary, "INSERT INTO app.t VALUES (1, 'acknowledged')")
    primary.close()
    poll(lambda: rows_or_none(lab, "db2") == [(1, "acknowledged")], 30, "db2 to apply the acknowledged row")
    return lab


def primary_nobody_acknowledges(lab_factory: LabFactory) -> tuple[LabCluster, MysqlActions]:
    """A lossless pair with db2 promoted by hand and db1 read-only and not following it: every
    commit on db2 waits for an ack nobody sends. Returns the lab and db2's adapter."""
    lab = lossless_pair(lab_factory)
    db1, db2 = actions(lab, "db1"), actions(lab, "db2")
    db1.ensure_schema()
    poll(lambda: db2.gtid_positions().binlog_pos == db1.gtid_positions().binlog_pos, 30,
         "db2 to apply the dbfence schema")
    run(sql(lab, "db1"), "SET GLOBAL read_only = ON")
    db2.promote(semi_sync=NEVER_FALLS_BACK)  # db1 does not follow db2: nobody acknowledges
    return lab, db2


def primary_again_by_hand(lab: LabCluster, db1: MysqlActions, db2: MysqlActions) -> None:
    """db1, a replica of db2, made primary again by hand (no DDL of its own) with db2 its semi-sync
    replica again."""
    run(sql(lab, "db2"), "SET GLOBAL read_only = ON")
    with contextlib.closing(sql(lab, "db1")) as conn:
        run(conn, "STOP SLAVE")
        run(conn, "RESET SLAVE ALL")
    db1.set_semi_sync_replica(False)
    db1.set_semi_sync_primary(NEVER_FALLS_BACK)
    db1.set_read_only(False)


def rows_or_none(lab: LabCluster, name: str) -> list[tuple[int, str]] | None:
    """``rows``, or None while the table has not replicated yet (a loaded host)."""
    try:
        return rows(lab, name)
    except pymysql.err.ProgrammingError as exc:
        if exc.args[0] != 1146:
            raise
        return None


def rows(lab: LabCluster, name: str) -> list[tuple[int, str]]:
    conn = sql(lab, name)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, note FROM app.t ORDER BY id")
            return [(int(row["id"]), str(row["note"])) for row in cur.fetchall()]
    finally:
        conn.close()


def innodb_log_flushed(conn: DbConnection) -> bool:
    status = str(one(conn, "SHOW ENGINE INNODB STATUS")["Status"])
    numbers = dict(re.findall(r"^(Log sequence number|Log flushed up to)\s+(\d+)", status, re.MULTILINE))
    return len(numbers) == 2 and numbers["Log sequence number"] == numbers["Log flushed up to"]


def cut_replica_and_promote_it(lab: LabCluster) -> None:
    """db2 stops receiving from db1 and becomes the new primary with a commit of its own."""
    replica = sql(lab, "db2")
    run(replica, "STOP SLAVE")
    run(replica, "RESET SLAVE ALL")
    run(replica, "SET GLOBAL read_only = OFF")
    run(replica, "INSERT INTO app.t VALUES (3, 'new primary')")
    replica.close()


def commit_waiting_for_an_ack(lab: LabCluster) -> tuple[threading.Thread, list[object]]:
    """db2 stops receiving, then a client's commit on db1 waits for its ack. Returns the client's
    thread and its outcome, filled when the commit ends: "OK", or the MySQL error number."""
    run(sql(lab, "db2"), "STOP SLAVE IO_THREAD")
    outcome: list[object] = []

    def commit() -> None:
        try:
            run(sql(lab, "db1", account="app"), "INSERT INTO app.t VALUES (2, 'never acknowledged')")
            outcome.append("OK")
        except pymysql.MySQLError as exc:
            outcome.append(exc.args[0])

    writer = threading.Thread(target=commit, daemon=True)
    writer.start()
    primary = sql(lab, "db1")
    poll(lambda: one(primary, "SHOW STATUS LIKE 'Rpl_semi_sync_master_wait_sessions'")["Value"] == "1",
         30, "the commit to wait for its ack")
    primary.close()
    return writer, outcome


def repair(lab: LabCluster, tmp_path: Path) -> RepairResult:
    node = lab.node("db1")
    control = MysqldControl(
        pid_file=Path(node.pid_file),
        # The lab's own start command: the same server, with --init-rpl-role=SLAVE for recovery.
        start_command=[sys.executable, "-m", "dbfence", "lab", "start-mysql", "--dir", str(lab.directory),
                       "--recovery", "db1"],
        start_timeout=120.0,
    )
    return truncate_unacknowledged(actions(lab, "db1"), control,
                                   lambda: actions(lab, "db2").gtid_positions().history,
                                   tmp_path / "errant-db1.sql", "-- dbfence test excerpt\n")


def test_a_commit_waiting_for_its_ack_is_saved_and_truncated_not_lost(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    lab = lossless_pair(lab_factory)
    evidence = read_evidence(actions(lab, "db1"))
    assert evidence.problem() is None, evidence
    save_evidence(tmp_path, evidence)
    assert load_evidence(tmp_path) == evidence

    writer, outcome = commit_waiting_for_an_ack(lab)
    primary = sql(lab, "db1")
    waiting_pos = one(primary, "SELECT @@gtid_binlog_pos AS p")["p"]
    primary.close()
    cut_replica_and_promote_it(lab)

    result = repair(lab, tmp_path)
    writer.join(10)
    print(f"\nrepair: {result}")
    assert outcome and outcome[0] != "OK", outcome  # its client never saw an OK
    assert result.succeeded, result
    assert result.binlog_pos_before == waiting_pos == "0-1-3"
    assert result.binlog_pos_after == "0-1-2"
    assert rows(lab, "db1") == [(1, "acknowledged")]
    saved = result.saved_file.read_text()
    assert "GTID 0-1-3" in saved and "never acknowledged" in saved  # kept, not lost
    assert "0-1-2 " not in saved and "'acknowledged'" not in saved  # exactly the errant one
    assert result.saved_file.stat().st_mode & 0o077 == 0

    # Contained in the new primary's GTID set: it rejoins and takes the new primary's commit.
    actions(lab, "db1").repoint(primary_address(lab, "db2"), actions(lab, "db2").gtid_positions().history,
                                semi_sync_replica=True)
    poll(lambda: rows(lab, "db1") == [(1, "acknowledged"), (3, "new primary")], 30,
         "db1 to replicate from db2")


def test_a_commit_acknowledged_after_a_fallback_to_async_is_never_truncated(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    lab = lossless_pair(lab_factory, SemiSyncSettings(timeout_ms=300))
    run(sql(lab, "db2"), "STOP SLAVE IO_THREAD")
    started = time.monotonic()
    run(sql(lab, "db1", account="app"), "INSERT INTO app.t VALUES (2, 'acknowledged without a replica')")
    assert time.monotonic() - started >= 0.25  # it waited for the ack, then fell back and said OK
    evidence = read_evidence(actions(lab, "db1"))
    assert evidence.problem() == ("semi-sync fell back to asynchronous 1 time(s) "
                                  "(Rpl_semi_sync_master_no_times)")
    # Durable in InnoDB, as it is about a second after any commit. (Killed before that, recovery
    # DOES truncate it, acknowledged or not: measured. The core's evidence check is the safety.)
    primary = sql(lab, "db1")
    poll(lambda: innodb_log_flushed(primary), 30, "InnoDB to flush its redo log")
    primary.close()
    cut_replica_and_promote_it(lab)

    # The core refuses on this evidence; even forced, crash recovery keeps a durable transaction.
    result = repair(lab, tmp_path)
    print(f"\nrepair of a committed transaction: {result}")
    assert not result.succeeded
    assert result.errant_after == "0-1-3"
    assert rows(lab, "db1") == [(1, "acknowledged"), (2, "acknowledged without a replica")]
    assert "acknowledged without a replica" in result.saved_file.read_text()


def test_the_agents_repair_keeper_records_evidence_saves_truncates_and_reports(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    lab = lossless_pair(lab_factory)
    node = lab.node("db1")
    history: list[tuple[str, str]] = []
    keeper = RepairKeeper(
        mode="truncate", state_dir=tmp_path / "state", node="db1", mysql=actions(lab, "db1"),
        control=MysqldControl(pid_file=Path(node.pid_file), start_timeout=120.0,
                              start_command=[sys.executable, "-m", "dbfence", "lab", "start-mysql", "--dir",
                                             str(lab.directory), "--recovery", "db1"]),
        on_done=lambda kind, detail: history.append((kind, detail)))
    assert keeper.view().evidence_problem == "no evidence recorded"
    keeper.on_fencing()
    poll(lambda: keeper.view().evidence_problem is None, 30, "the fencing evidence")
    assert (tmp_path / "state" / "fencing-evidence.json").exists()

    commit_waiting_for_an_ack(lab)
    cut_replica_and_promote_it(lab)

    started = time.monotonic()
    keeper.start_truncate(TruncateErrant("db2", ("0-1-3",), ActionReason.REPAIR_UNACKNOWLEDGED),
                          lambda: actions(lab, "db2").gtid_positions().history)
    assert keeper.view().running
    poll(lambda: not keeper.view().running, 120, "the repair to finish")
    print(f"\nkeeper repair: {time.monotonic() - started:.2f} s, {keeper.status()}")
    view = keeper.view()
    assert view.gave_up == "" and view.saved_file.startswith(str(tmp_path / "state" / "errant-db1-"))
    assert "never acknowledged" in Path(view.saved_file).read_text()
    assert rows(lab, "db1") == [(1, "acknowledged")]
    assert len(history) == 1 and history[0][0] == "repair"
    assert history[0][1].startswith("truncated 0-1-3 in ") and view.saved_file in history[0][1]
    keeper.on_serving()  # rejoined: the evidence of that fence is spent
    assert not (tmp_path / "state" / "fencing-evidence.json").exists()
    assert keeper.view().evidence_problem == "no evidence recorded"


def lab_keeper(lab: LabCluster, tmp_path: Path, history: list[tuple[str, str]],
               name: str = "db1") -> RepairKeeper:
    node = lab.node(name)
    return RepairKeeper(
        mode="truncate", state_dir=tmp_path / "state", node=name, mysql=actions(lab, name),
        control=MysqldControl(pid_file=Path(node.pid_file), start_timeout=120.0,
                              start_command=[sys.executable, "-m", "dbfence", "lab", "start-mysql", "--dir",
                                             str(lab.directory), "--recovery", name]),
        on_done=lambda kind, detail: history.append((kind, detail)))


def test_the_fence_by_crash_keeps_a_waiting_commit_in_doubt_and_the_repair_truncates_it(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    lab = lossless_pair(lab_factory)
    history: list[tuple[str, str]] = []
    keeper = lab_keeper(lab, tmp_path, history)
    keeper.on_fencing()
    assert not keeper.fence_by_crash()  # nothing waits for an ack: fence as usual
    assert lab.node("db1").process.alive()

    commit_waiting_for_an_ack(lab)
    # An agent that did not see this node leave PRIMARY (just started) fences as usual: only a
    # FENCED node starts mysqld again.
    assert not lab_keeper(lab, tmp_path / "fresh-agent", []).fence_by_crash()
    with contextlib.closing(sql(lab, "db1")) as primary:
        before = one(primary, "SELECT @@global.gtid_binlog_state AS state, @@global.gtid_slave_pos AS slave")
    had = BinlogState.merged(GtidPosition.parse_gtids(str(before["state"])),
                             GtidPosition.parse_gtids(str(before["slave"])))
    assert had.seq_no(0, 1) == 3  # the waiting commit is in the binlog
    assert keeper.fence_by_crash()
    assert not lab.node("db1").process.alive()
    view = keeper.view()
    assert view.awaiting_restart and view.evidence_problem is None
    # What mysqld held at the kill, for the takeover without a primary (issue 16): the record
    # publishes it while mysqld stays down.
    assert view.binlog_state_at_kill == had and view.server_id_at_kill == 1
    restarted_agent = lab_keeper(lab, tmp_path, []).view()  # the evidence file says it too
    assert restarted_agent.awaiting_restart and restarted_agent.evidence_problem is None
    assert restarted_agent.binlog_state_at_kill == had and restarted_agent.server_id_at_kill == 1
    # mysqld is down (killed by the fence): nothing can make the waiting commit durable meanwhile.
    cut_replica_and_promote_it(lab)

    keeper.start_truncate(TruncateErrant("db2", (), ActionReason.REPAIR_UNACKNOWLEDGED),
                          lambda: actions(lab, "db2").gtid_positions().history)
    poll(lambda: not keeper.view().running, 120, "the repair to finish")
    print(f"\nrepair after the fence by crash: {keeper.status()}")
    view = keeper.view()
    assert view.gave_up == "" and not view.awaiting_restart, keeper.status()
    assert view.binlog_state_at_kill is None  # mysqld runs again: its live state speaks
    assert "never acknowledged" in Path(view.saved_file).read_text()
    assert rows(lab, "db1") == [(1, "acknowledged")]
    assert history[0][0] == "repair" and history[0][1].startswith("truncated 0-1-3 in ")


def test_an_ack_wait_the_fence_ends_is_not_held_against_the_evidence_another_is(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    lab = lossless_pair(lab_factory)
    keeper = lab_keeper(lab, tmp_path, [])
    keeper.mode = "rebuild"  # no fence by crash: the fence's KILL ends the wait
    keeper.on_fencing()
    poll(lambda: keeper.view().evidence_problem is None, 30, "the evidence to be read")
    writer, outcome = commit_waiting_for_an_ack(lab)

    killed = keeper.fence(lambda: actions(lab, "db1").fence())
    writer.join(10)
    assert outcome and outcome[0] != "OK", outcome  # its client never saw an OK
    assert any(session.user == "app" for session in killed)
    assert keeper.status()["ended_by_fence"] == 1
    # MariaDB counts the ended wait as not acknowledged; put down to the fence, it is not held against us.
    after = read_evidence(actions(lab, "db1"))
    assert after.no_tx == 1 and after.no_times == 0
    assert after.problem() == "1 commit(s) were not acknowledged by a replica (Rpl_semi_sync_master_no_tx)"
    assert replace(after, ended_by_fence=1).problem() is None
    # A fence later than the one that ended it did not see it end: the evidence stays strict.
    keeper.on_fencing()
    poll(lambda: keeper.view().evidence_problem != "evidence not read yet", 30, "the evidence to be read")
    assert keeper.view().evidence_problem == after.problem()


def test_a_mysqld_the_fence_could_not_reach_is_crashed_when_it_answers_again(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    lab = lossless_pair(lab_factory)
    keeper = lab_keeper(lab, tmp_path, [])
    keeper.on_fencing()
    poll(lambda: keeper.view().evidence_problem is None, 30, "the evidence to be read")
    assert not keeper.fence_by_crash()  # reachable, nothing waits: fence as usual
    process = lab.node("db1").process
    process.signal(signal.SIGSTOP)
    try:
        keeper.fence_unreached()  # what the executor reports when the fence finds it stopped
    finally:
        process.signal(signal.SIGCONT)
    # Nothing waits for an ack yet, but statements it had buffered may start committing now.
    assert keeper.fence_by_crash()
    assert not process.alive()
    view = keeper.view()
    assert view.awaiting_restart and view.evidence_problem is None


@pytest.mark.parametrize("primary_unreadable", [0, 2], ids=["primary-readable", "primary-unreadable-twice"])
def test_a_new_primarys_first_commit_killed_by_the_fence_is_saved_truncated_and_mysqld_started(
        lab_factory: LabFactory, tmp_path: Path, primary_unreadable: int) -> None:
    """The soak's case (seed 11): db1's first transaction as primary waits for an ack, the fence
    kills mysqld, and the new primary holds nothing ever written by server 1, so every
    transaction of server 1 is errant. The repair saves it, starts mysqld (recovery truncates
    it), and the node has nothing errant left: it can rejoin. When an attempt fails (the
    primary cannot be read), mysqld stays down, the status says why, and the repair retries."""
    lab = lab_factory(mysql_count=2)
    actions(lab, "db1").set_semi_sync_primary(NEVER_FALLS_BACK)
    actions(lab, "db2").set_semi_sync_replica(True)
    primary = sql(lab, "db1")
    poll(lambda: one(primary, "SHOW STATUS LIKE 'Rpl_semi_sync_master_clients'")["Value"] == "1",
         30, "db2 to be a semi-sync replica of db1")
    run(primary, "SET SESSION server_id = 99")  # written by an earlier primary, not by server 1
    run(primary, "CREATE TABLE app.t (id INT PRIMARY KEY, note VARCHAR(40))")
    run(primary, "INSERT INTO app.t VALUES (1, 'acknowledged')")
    primary.close()
    poll(lambda: rows_or_none(lab, "db2") == [(1, "acknowledged")], 30, "db2 to apply the acknowledged row")
    history: list[tuple[str, str]] = []
    keeper = lab_keeper(lab, tmp_path, history)
    keeper.on_fencing()
    commit_waiting_for_an_ack(lab)
    assert keeper.fence_by_crash()
    assert not lab.node("db1").process.alive()
    cut_replica_and_promote_it(lab)
    new_primary = actions(lab, "db2").gtid_positions().history
    assert all(server != 1 for _, server in new_primary.streams), new_primary

    failures: list[str] = []

    def primary_state() -> GtidState:
        if len(failures) < primary_unreadable:  # what a primary that does not answer raises
            failures.append("unreadable")
            raise MysqlAdapterError("the primary did not answer (test)")
        return actions(lab, "db2").gtid_positions().history

    keeper.start_truncate(TruncateErrant("db2", (), ActionReason.REPAIR_UNACKNOWLEDGED), primary_state)
    if primary_unreadable:
        poll(lambda: bool(keeper.status().get("retrying")), 60, "the repair to retry")
        assert "mysqld left down" in keeper.status()["retrying"] and keeper.view().running
        assert not mysqld_running(Path(lab.node("db1").pid_file))
    poll(lambda: not keeper.view().running, 120, "the repair to finish")
    print(f"\nrepair of a first transaction as primary: {keeper.status()}")
    view = keeper.view()
    assert view.gave_up == "" and not view.running and not view.awaiting_restart, keeper.status()
    assert mysqld_running(Path(lab.node("db1").pid_file))
    saved = Path(view.saved_file).read_text()
    assert "never acknowledged" in saved and "acknowledged')" not in saved.replace("never acknowledged')", "")
    assert rows(lab, "db1") == [(1, "acknowledged")]
    left = actions(lab, "db1").gtid_positions().history.errant_against(
        actions(lab, "db2").gtid_positions().history)
    assert left == (), left
    assert history[0][0] == "repair" and history[0][1].startswith("truncated 0-1-3 in "), history


def test_a_killed_primary_whose_waiting_commit_reached_the_new_primary_is_started_with_nothing_to_save(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    """The soak's case (seed 301): the commit that waited for an ack had reached the replica (which
    had not acknowledged it yet), the fence killed mysqld, and the replica became primary with that
    commit. Nothing of this node is errant, and its binlog ends at the very GTID the new primary
    has last of server 1, where mariadb-binlog refuses to start ("never reached expected GTID
    state"). The repair used to retry that for ever with mysqld down; now it saves nothing, says
    so, and starts mysqld."""
    lab = lossless_pair(lab_factory)
    # db2 receives without acknowledging: its IO thread reconnects with semi-sync off, and db1 (no
    # semi-sync replica left, rpl_semi_sync_master_wait_no_slave on) still waits for an ack.
    replica = sql(lab, "db2")
    run(replica, "SET GLOBAL rpl_semi_sync_slave_enabled = OFF")
    run(replica, "STOP SLAVE IO_THREAD")
    run(replica, "START SLAVE IO_THREAD")
    replica.close()
    history: list[tuple[str, str]] = []
    keeper = lab_keeper(lab, tmp_path, history)
    keeper.on_fencing()

    def commit() -> None:
        with contextlib.suppress(pymysql.MySQLError):
            run(sql(lab, "db1", account="app"), "INSERT INTO app.t VALUES (2, 'received, not acknowledged')")

    threading.Thread(target=commit, daemon=True).start()
    primary = sql(lab, "db1")
    poll(lambda: one(primary, "SHOW STATUS LIKE 'Rpl_semi_sync_master_wait_sessions'")["Value"] == "1",
         30, "the commit to wait for its ack")
    primary.close()
    poll(lambda: rows_or_none(lab, "db2") == [(1, "acknowledged"), (2, "received, not acknowledged")], 30,
         "db2 to apply the commit it did not acknowledge")
    assert keeper.fence_by_crash()
    assert not lab.node("db1").process.alive()
    cut_replica_and_promote_it(lab)

    keeper.start_truncate(TruncateErrant("db2", (), ActionReason.REPAIR_UNACKNOWLEDGED),
                          lambda: actions(lab, "db2").gtid_positions().history)
    poll(lambda: not keeper.view().running or bool(keeper.status().get("retrying")), 120,
         "the repair to finish (or retry)")
    print(f"\nrepair with nothing errant after the fence by crash: {keeper.status()}")
    view = keeper.view()
    assert not view.running and view.gave_up == "" and not view.awaiting_restart, keeper.status()
    assert mysqld_running(Path(lab.node("db1").pid_file))
    assert "nothing errant" in Path(view.saved_file).read_text()
    left = actions(lab, "db1").gtid_positions().history.errant_against(
        actions(lab, "db2").gtid_positions().history)
    assert left == (), left


@pytest.mark.parametrize("token_order", ["under-semi-sync", "before-semi-sync"])
def test_a_fencing_token_no_replica_received_is_removed_with_the_other_unacknowledged_commits(
        lab_factory: LabFactory, tmp_path: Path, token_order: str, caplog: pytest.LogCaptureFixture) -> None:
    """The soak's open finding (seed 11, second replay): db2 is promoted, its first transaction
    as primary is the fencing-token write, then a commit waits for an ack and the fence kills
    mysqld. Written under semi-sync (the promotion's order now), the token write is in doubt like
    the commit and crash recovery removes both: the node can rejoin. Written before semi-sync was
    switched on (the old order, kept here as the measurement of the cause), it was committed at
    once and survives recovery although no replica held it: the repair used to give up, and now
    discards it as this node's own token write (issue 16)."""
    caplog.set_level(logging.INFO, logger="dbfence.agent")
    lab = lossless_pair(lab_factory)
    db2 = actions(lab, "db2")
    actions(lab, "db1").ensure_schema()  # as in any cluster the agents run: made by the first primary
    poll(lambda: db2.read_fencing_token() is None and db2.gtid_positions().binlog_pos
         == actions(lab, "db1").gtid_positions().binlog_pos, 30, "db2 to apply the dbfence schema")
    # The old primary db1 steps down and does not follow db2: nobody will acknowledge db2's writes.
    run(sql(lab, "db1"), "SET GLOBAL read_only = ON")
    writer = FencingTokenWriter(db2, "agent-db2", wait_s=60.0)
    if token_order == "under-semi-sync":
        db2.promote(semi_sync=NEVER_FALLS_BACK)
        assert not writer.ensure(7)
    else:
        db2.promote(semi_sync=None)
        db2.write_fencing_token(7, "agent-db2")  # commits at once: semi-sync is not on yet
        db2.set_semi_sync_primary(NEVER_FALLS_BACK)
    new_primary = sql(lab, "db2")
    if token_order == "under-semi-sync":
        waiting = "SHOW STATUS LIKE 'Rpl_semi_sync_master_wait_sessions'"
        poll(lambda: one(new_primary, waiting)["Value"] == "1", 30, "the token write to wait for its ack")
    token_pos = one(new_primary, "SELECT @@gtid_binlog_pos AS p")["p"]
    token_seq = int(str(token_pos).split("-")[2])
    assert token_pos == f"0-2-{token_seq}", token_pos  # server 2's first transaction: the token
    history: list[tuple[str, str]] = []
    keeper = lab_keeper(lab, tmp_path, history, name="db2")
    keeper.on_fencing()
    poll(lambda: keeper.view().evidence_problem is None, 30, "the fencing evidence")

    def commit() -> None:  # the soak's waiting session (a heartbeat); its client gets an error
        with contextlib.suppress(pymysql.MySQLError):
            run(sql(lab, "db2", account="app"), "INSERT INTO app.t VALUES (2, 'never acknowledged')")

    threading.Thread(target=commit, daemon=True).start()
    poll(lambda: one(new_primary, "SELECT @@gtid_binlog_pos AS p")["p"] == f"0-2-{token_seq + 1}", 30,
         "the commit to reach the binlog and wait for its ack")
    new_primary.close()
    assert keeper.fence_by_crash()  # commits wait for an ack: mysqld is killed, they stay in doubt
    assert not lab.node("db2").process.alive()
    evidence = keeper.view()
    assert evidence.awaiting_restart and evidence.evidence_problem is None

    keeper.start_truncate(TruncateErrant("db1", (), ActionReason.REPAIR_UNACKNOWLEDGED),
                          lambda: actions(lab, "db1").gtid_positions().history)
    poll(lambda: not keeper.view().running, 120, "the repair to finish")
    print(f"\ntoken {token_order}: {keeper.status()}")
    view = keeper.view()
    saved = Path(view.saved_file).read_text()
    assert "never acknowledged" in saved and "fencing" in saved  # both kept before anything is removed
    assert mysqld_running(Path(lab.node("db2").pid_file))
    left = db2.gtid_positions().history.errant_against(actions(lab, "db1").gtid_positions().history)
    if token_order == "under-semi-sync":
        assert view.gave_up == "", keeper.status()
        assert left == (), left  # nothing errant: it can rejoin
        assert db2.read_fencing_token() is None  # the token write is gone with the commit
        assert rows(lab, "db2") == [(1, "acknowledged")]
        assert history[0][0] == "repair" and history[0][1].startswith("truncated 0-2-"), history
    else:
        # What the soak found: the commit is gone, the token write survived recovery (a rebuild was
        # needed). Only the node's own token is left: it is discarded (issue 16) and the node can rejoin.
        assert view.gave_up == "", keeper.status()
        assert left == (), left
        assert keeper.status()["last"]["discarded"] == f"0-2-{token_seq} (fencing token(s) 7)"
        # The cluster's first token: the row it inserted goes too (the primary's first token inserts it).
        assert db2.read_fencing_token() is None
        assert rows(lab, "db2") == [(1, "acknowledged")]
        assert "were discarded (RESET MASTER)" in history[0][1], history
        done = [r.getMessage() for r in caplog.records if '"event": "repair_done"' in r.getMessage()]
        assert len(done) == 1 and f'"discarded": "0-2-{token_seq} (fencing token(s) 7)"' in done[0], done


def test_a_token_write_no_replica_acknowledges_is_ended_and_not_held_against_the_evidence(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    """A promotion nobody can follow (the replicas' histories forked from the new primary's)
    must not wait for semi-sync's timeout: the writer ends the token's wait after ack_wait_s. The
    KILL commits it, MariaDB counts it as not acknowledged, and the keeper puts that down to the
    agent's own write, so a later fence of this mysqld can still truncate its clients' commits."""
    lab = lossless_pair(lab_factory)
    db2 = actions(lab, "db2")
    actions(lab, "db1").ensure_schema()
    poll(lambda: db2.gtid_positions().binlog_pos == actions(lab, "db1").gtid_positions().binlog_pos, 30,
         "db2 to apply the dbfence schema")
    run(sql(lab, "db1"), "SET GLOBAL read_only = ON")
    db2.promote(semi_sync=NEVER_FALLS_BACK)
    keeper = lab_keeper(lab, tmp_path, [], name="db2")
    keeper.on_promoted()  # the term begins: sampled from here
    writer = FencingTokenWriter(db2, "agent-db2", wait_s=60.0, ack_wait_s=1.0)
    started = time.monotonic()
    assert not writer.ensure(7, keeper.end_own_ack_wait)
    poll(lambda: writer.ensure(7, keeper.end_own_ack_wait), 30, "the token's wait to be ended")
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 10, elapsed
    token = db2.read_fencing_token()
    assert token is not None and token.token == 7  # committed by the KILL, unacknowledged
    sampled = keeper.term.samples
    poll(lambda: keeper.term.samples >= sampled + 2 or keeper.term.taint, 30,
         "two samples after the token's wait ended")  # a tainted term is sampled no more
    assert keeper.term.taint == ""  # the sampling knows it was the token too
    keeper.on_fencing()
    poll(lambda: keeper.view().evidence_problem != "evidence not read yet", 30, "the evidence")
    raw = read_evidence(db2)
    assert raw.no_tx == 1 and raw.no_times == 0  # MariaDB counts it against us ...
    assert keeper.view().evidence_problem is None  # ... the keeper knows it was the token


def test_a_node_primary_again_after_a_rejoin_truncates_what_its_new_term_left_unacknowledged(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    """Soak seed 101: db1 was primary, was fenced, rejoined as a replica (the repoint turns its
    semi-sync master off, which MariaDB counts as a fallback) and became primary again. A commit of
    its new term waits for an ack when it is fenced: the counters its term started from are not
    held against it, so the truncation goes ahead and removes only that commit."""
    lab = lossless_pair(lab_factory)
    history: list[tuple[str, str]] = []
    keeper = lab_keeper(lab, tmp_path, history)
    db1, db2 = actions(lab, "db1"), actions(lab, "db2")
    # Term 1 ends cleanly: db2 takes over, db1 rejoins it as a semi-sync replica.
    keeper.on_fencing()
    db1.fence()
    db2.promote(semi_sync=NEVER_FALLS_BACK)
    db1.rejoin(primary_address(lab, "db2"), db2.gtid_positions().history, semi_sync_replica=True)
    keeper.on_serving()
    run(sql(lab, "db2", account="app"), "INSERT INTO app.t VALUES (5, 'written by db2')")
    poll(lambda: (5, "written by db2") in rows(lab, "db1"), 30, "db1 to apply db2's row")
    counted = read_evidence(db1)
    assert counted.no_times >= 1, counted  # the rejoin's switch-off, counted since mysqld started
    # Term 2: db1 is promoted from a replica again (what the executor does: then on_promoted).
    db2.fence()
    db1.promote(semi_sync=NEVER_FALLS_BACK)
    keeper.on_promoted()
    db2.repoint(primary_address(lab, "db1"), db1.gtid_positions().history, semi_sync_replica=True)
    keeper.on_serving()
    primary = sql(lab, "db1")
    poll(lambda: one(primary, "SHOW STATUS LIKE 'Rpl_semi_sync_master_clients'")["Value"] == "1",
         30, "db2 to be a semi-sync replica of db1")
    primary.close()
    run(sql(lab, "db1", account="app"), "INSERT INTO app.t VALUES (6, 'acknowledged in term 2')")
    writer, outcome = commit_waiting_for_an_ack(lab)

    keeper.on_fencing()
    assert keeper.fence_by_crash(), keeper.view()  # the old rule: "fell back 1 time(s)", fenced as usual
    assert keeper.view().evidence_problem is None
    writer.join(10)
    assert outcome and outcome[0] != "OK", outcome  # its client never saw an OK
    cut_replica_and_promote_it(lab)
    keeper.start_truncate(TruncateErrant("db2", (), ActionReason.REPAIR_UNACKNOWLEDGED),
                          lambda: db2.gtid_positions().history)
    poll(lambda: not keeper.view().running, 120, "the repair to finish")
    print(f"\nrepair in a second term: {keeper.status()}")
    assert keeper.view().gave_up == "", keeper.status()
    assert rows(lab, "db1") == [(1, "acknowledged"), (5, "written by db2"), (6, "acknowledged in term 2")]
    saved = Path(keeper.view().saved_file).read_text()
    assert "never acknowledged" in saved and "acknowledged in term 2" not in saved
    assert history[0][0] == "repair", history


def test_a_mysqld_restarted_since_the_promotion_proves_nothing(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    """Its counters start again from zero: they say nothing of the term's commits before the restart."""
    lab = lossless_pair(lab_factory)
    keeper = lab_keeper(lab, tmp_path, [])
    keeper.on_promoted()
    lab.kill_mysql("db1", signal.SIGKILL)
    poll(lambda: not lab.node("db1").process.alive(), 30, "db1's mysqld to exit")
    lab.start_mysql("db1")

    def semi_sync_on() -> bool:  # as the agent's reconcile would; TCP may lag the socket a moment
        try:
            actions(lab, "db1").set_semi_sync_primary(NEVER_FALLS_BACK)
        except MysqlAdapterError:
            return False
        return True
    poll(semi_sync_on, 30, "db1 to answer after its restart")
    assert read_evidence(actions(lab, "db1")).problem() is None  # clean on its own: the old rule's hole
    keeper.on_fencing()
    poll(lambda: keeper.view().evidence_problem != "evidence not read yet", 30, "the evidence to be read")
    problem = str(keeper.view().evidence_problem)
    assert problem.startswith("mysqld restarted since this node became primary (pid "), problem
    assert not keeper.fence_by_crash() and lab.node("db1").process.alive()

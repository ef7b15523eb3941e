"""Role actions have their effect on real MariaDB 10.11: fence, promote (lossless semi-sync),
repoint by GTID, clean rejoin of a former primary, refusal of one with errant GTIDs."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import pymysql
import pytest
from pymysql.constants.ER import BAD_DB_ERROR as ER_BAD_DB_ERROR
from pymysql.constants.ER import NO_SUCH_TABLE as ER_NO_SUCH_TABLE

from dbfence.lab.cluster import LabCluster
from dbfence.mysql.actions import MysqlActions, SemiSyncSettings
from dbfence.mysql.connection import DbConnection
from dbfence.mysql.errors import (
    ErrantTransactionsError,
    GtidWaitTimeoutError,
    MysqlAdapterError,
    StaleFencingTokenError,
    UnsafeAccountError,
    UnsafeOnReplicaError,
)
from dbfence.mysql.flavour import Flavour
from dbfence.mysql.gtid import Gtid, GtidPosition
from dbfence.mysql.probes import Role
from dbfence.mysql.token_writer import FencingTokenWriter
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import (
    actions,
    monitor,
    observe_until_healthy,
    one,
    poll,
    primary_address,
    run,
    sql,
)

TEST_SEMI_SYNC = SemiSyncSettings(timeout_ms=60_000)  # long enough never to expire during the test


def count_rows(lab: LabCluster, name: str, where: str = "1") -> int:
    """Rows of dbtest.t on ``name``; 0 while the replica has not yet applied the CREATE."""
    conn = sql(lab, name)
    try:
        return int(one(conn, f"SELECT COUNT(*) AS n FROM dbtest.t WHERE {where}")["n"])
    except pymysql.err.ProgrammingError as exc:
        if exc.args[0] in (ER_BAD_DB_ERROR, ER_NO_SUCH_TABLE):
            return 0
        raise
    finally:
        conn.close()


def create_test_table(primary: DbConnection) -> None:
    run(primary, "CREATE DATABASE dbtest")
    run(primary, "CREATE TABLE dbtest.t (id INT PRIMARY KEY, origin VARCHAR(10))")


def seed_one_row_on_every_replica(lab: LabCluster, primary: DbConnection) -> None:
    """dbtest.t with one row from db1, applied on db2 and db3."""
    create_test_table(primary)
    run(primary, "INSERT INTO dbtest.t VALUES (1, 'db1')")
    poll(lambda: count_rows(lab, "db2") == 1 and count_rows(lab, "db3") == 1, 10, "the row on db2 and db3")


def status_var(lab: LabCluster, name: str, var: str) -> str:
    conn = sql(lab, name)
    try:
        return str(one(conn, "SHOW GLOBAL STATUS LIKE %s", (var,))["Value"])
    finally:
        conn.close()


def poll_received(replica: MysqlActions, wanted: GtidPosition, what: str) -> None:
    """Until ``replica``'s relay log holds ``wanted`` (received; applied or not)."""
    def received() -> bool:
        status = replica.replica_status()
        return status is not None and GtidPosition.parse(status.received_gtid_pos).covers(wanted)

    poll(received, 10, what)


def delay_applier(lab: LabCluster, name: str, seconds: int) -> None:
    """``name`` keeps receiving (and acknowledging) but applies ``seconds`` behind (MASTER_DELAY)."""
    replica = sql(lab, name)
    run(replica, "STOP SLAVE")
    run(replica, f"CHANGE MASTER TO MASTER_DELAY = {seconds}")
    run(replica, "START SLAVE")
    replica.close()


def in_thread(work: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run_it() -> None:
        try:
            work()
        except BaseException as exc:  # surfaced by the test
            errors.append(exc)

    thread = threading.Thread(target=run_it, daemon=True)
    thread.start()
    return thread, errors


def test_account_check_refuses_accounts_that_write_through_read_only(lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=1)
    db1 = actions(lab, "db1")
    assert db1.server_version().flavour is Flavour.MARIADB
    db1.check_app_account("app")  # DML only: accepted
    with pytest.raises(UnsafeAccountError, match=r"dbfence_agent@127\.0\.0\.1 has ALL PRIVILEGES"):
        db1.check_app_account("dbfence_agent")
    admin = sql(lab, "db1")
    run(admin, "CREATE USER 'app2'@'%' IDENTIFIED BY 'x'")
    run(admin, "GRANT SELECT ON *.* TO 'app2'@'%'")
    db1.check_app_account("app2")
    run(admin, "GRANT READ_ONLY ADMIN ON *.* TO 'app2'@'%'")
    with pytest.raises(UnsafeAccountError, match=r"app2@% has READ ONLY ADMIN"):
        db1.check_app_account("app2")
    run(admin, "REVOKE READ_ONLY ADMIN ON *.* FROM 'app2'@'%'")
    run(admin, "CREATE ROLE powerful")
    run(admin, "GRANT SUPER ON *.* TO powerful")
    run(admin, "GRANT powerful TO 'app2'@'%'")
    with pytest.raises(UnsafeAccountError, match=r"app2@% has SUPER \(via role powerful\)"):
        db1.check_app_account("app2")
    with pytest.raises(UnsafeAccountError, match="does not exist"):
        db1.check_app_account("nobody")
    # and the reason it matters: SUPER writes through read_only on 10.11
    db1.set_read_only(True)
    run(admin, "CREATE DATABASE IF NOT EXISTS dbtest")
    admin.close()


def test_failover_promote_repoint_rejoin_and_errant_refusal(lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=3)
    db1, db2, db3 = actions(lab, "db1"), actions(lab, "db2"), actions(lab, "db3")
    # lossless from the start: db1 waits for an ack from db2 or db3
    db2.set_semi_sync_replica(True)
    db3.set_semi_sync_replica(True)
    db1.set_semi_sync_primary(TEST_SEMI_SYNC)
    poll(lambda: status_var(lab, "db1", "Rpl_semi_sync_master_clients") == "2", 10, "two semi-sync replicas")
    primary = sql(lab, "db1")
    create_test_table(primary)
    for i in range(1, 6):
        run(primary, "INSERT INTO dbtest.t VALUES (%s, 'db1')", (i,))
    primary.close()

    # --- waiting for the relay log times out, naming both positions, while the applier is
    # blocked (a table lock held on the replica) ---
    replica = sql(lab, "db3")
    run(replica, "LOCK TABLES dbtest.t READ")
    primary = sql(lab, "db1")
    run(primary, "INSERT INTO dbtest.t VALUES (50, 'db1')")
    primary.close()
    wanted = db1.gtid_positions().binlog_pos
    poll(lambda: db3.replica_status().received_gtid_pos == str(wanted), 10, "db3 to receive")  # type: ignore[union-attr]
    with pytest.raises(GtidWaitTimeoutError, match=f"received '{wanted}'"):
        db3.wait_relay_log_applied(0.3)
    run(replica, "UNLOCK TABLES")

    # --- a stopped applier is started by the wait (found by the soak, seed 3: a STOP SLAVE
    # that timed out on the agent's side completed later and left a promoting node's applier
    # stopped, so its promotion waited for its relay log forever) ---
    run(replica, "STOP SLAVE SQL_THREAD")
    primary = sql(lab, "db1")
    run(primary, "INSERT INTO dbtest.t VALUES (51, 'db1')")
    primary.close()
    wanted = db1.gtid_positions().binlog_pos
    poll(lambda: db3.replica_status().received_gtid_pos == str(wanted), 10, "db3 to receive")  # type: ignore[union-attr]
    assert db3.wait_relay_log_applied(10).covers(wanted)
    assert db3.replica_status().sql_running == "Yes"  # type: ignore[union-attr]
    assert count_rows(lab, "db3", "id = 51") == 1

    # --- the same with both threads stopped (the source lost the lock, then a repoint's
    # STOP SLAVE stopped the applier): in GTID mode a plain START SLAVE SQL_THREAD would begin a
    # new relay log from the applied position, dropping received (acknowledged) commits; found by
    # the soak, seed 11 with [rejoin] truncate: 11 lost ---
    run(replica, "STOP SLAVE SQL_THREAD")
    primary = sql(lab, "db1")
    run(primary, "INSERT INTO dbtest.t VALUES (52, 'db1')")
    primary.close()
    wanted = db1.gtid_positions().binlog_pos
    poll(lambda: db3.replica_status().received_gtid_pos == str(wanted), 10, "db3 to receive")  # type: ignore[union-attr]
    run(replica, "STOP SLAVE IO_THREAD")
    assert db3.wait_relay_log_applied(10).covers(wanted)
    assert count_rows(lab, "db3", "id = 52") == 1
    status = db3.replica_status()
    assert status is not None and status.received_gtid_pos == str(wanted)
    assert status.using_gtid == "Slave_Pos"  # GTID mode back once nothing is left to apply
    run(replica, "START SLAVE")  # as it was: the rest of the test replicates on
    replica.close()

    # --- fence db1: read_only, clients cut, the agent's probe sessions and replication kept ---
    clients = [sql(lab, "db1", account="app") for _ in range(3)]
    with monitor(lab, "db1", Role.PRIMARY) as probes:
        observe_until_healthy(probes, 10)  # reserved and heartbeat sessions are open
        keep = probes.agent_connection_ids()
        assert keep
        killed = db1.fence(keep_ids=keep)
        assert {k.user for k in killed} == {"app"} and len(killed) == 3
        for client in clients:
            with pytest.raises(pymysql.err.MySQLError):
                run(client, "SELECT 1")
        watcher = sql(lab, "db1")
        with watcher.cursor() as cur:
            cur.execute("SELECT ID, COMMAND FROM information_schema.PROCESSLIST")
            rows = cur.fetchall()
        ids = {int(r["ID"]) for r in rows}
        assert keep <= ids  # the agent's own sessions survived
        assert sum(1 for r in rows if r["COMMAND"] == "Binlog Dump") == 2  # replicas still fed
        watcher.close()
    assert db1.read_only()
    app = sql(lab, "db1", account="app")
    with pytest.raises(pymysql.err.MySQLError) as refused:
        run(app, "INSERT INTO dbtest.t VALUES (99, 'late')")
    assert refused.value.args[0] == 1290  # --read-only
    app.close()

    # --- promote db2 in lossless mode, with the lock's fencing token ---
    db1_pos = db1.gtid_positions().binlog_pos
    assert db2.wait_relay_log_applied(10).covers(db1_pos)
    assert db3.wait_relay_log_applied(10).covers(db1_pos)
    with pytest.raises(UnsafeOnReplicaError):
        db3.ensure_schema()  # would be an errant write on a replica
    db2.promote(semi_sync=TEST_SEMI_SYNC)
    assert not db2.read_only() and db2.replica_status() is None
    semi = db2.semi_sync_status()
    assert semi["wait_point"] == "AFTER_SYNC" and int(str(semi["primary_enabled"])) == 1
    before = db2.gtid_positions().binlog_pos
    db2.ensure_schema()  # present: no DDL, no GTID (a DDL binlogged after commits waiting for an
    assert db2.gtid_positions().binlog_pos == before  # ack stops crash recovery from truncating them)

    # --- lossless: with no replica acknowledging, neither the fencing token nor a commit completes ---
    # (No ending of the wait here: this part shows the lossless wait itself.)
    token_writer = FencingTokenWriter(db2, "agent-db2", wait_s=30.0, ack_wait_s=30.0, alone_wait_s=30.0)
    assert not token_writer.ensure(7)  # written in its own thread: the caller does not wait
    poll(
        lambda: status_var(lab, "db2", "Rpl_semi_sync_master_wait_sessions") == "1",
        10,
        "the token write to wait for a replica's ack",
    )
    writer = sql(lab, "db2", account="app")
    thread, errors = in_thread(lambda: run(writer, "INSERT INTO dbtest.t VALUES (6, 'db2')"))
    for _ in range(10):  # they stay blocked while nobody acknowledges
        thread.join(0.1)
        assert thread.is_alive()
        assert status_var(lab, "db2", "Rpl_semi_sync_master_status") == "ON"
        assert not token_writer.ensure(7) and token_writer.in_flight() == 7  # invisible until acked
        stored = db2.read_fencing_token()
        assert stored is None or stored.token != 7

    # --- repoint db3 to db2 with semi-sync on: its ack releases the token and the commit ---
    db3.repoint(primary_address(lab, "db2"), db2.gtid_positions().binlog_state, semi_sync_replica=True)
    thread.join(15)
    assert not thread.is_alive() and not errors
    assert token_writer.wait(15)
    assert token_writer.ensure(7)
    token = db2.read_fencing_token()
    assert token is not None and (token.token, token.holder, token.server_id) == (7, "agent-db2", 2)
    assert status_var(lab, "db2", "Rpl_semi_sync_master_no_tx") == "0"  # nothing fell back to async
    writer.close()
    new_primary = sql(lab, "db2")
    run(new_primary, "INSERT INTO dbtest.t VALUES (7, 'db2')")
    new_primary.close()
    poll(lambda: count_rows(lab, "db3", "origin = 'db2'") == 2, 10, "db2's writes on db3")
    db3_token = actions(lab, "db3").read_fencing_token()
    assert db3_token is not None and db3_token.token == 7  # the epoch replicated
    db3_status = db3.replica_status()
    assert db3_status is not None and db3_status.using_gtid == "Slave_Pos"

    # --- the clean former primary rejoins and catches up ---
    db1.rejoin(primary_address(lab, "db2"), db2.gtid_positions().binlog_state, semi_sync_replica=True)
    poll(lambda: count_rows(lab, "db1", "origin = 'db2'") == 2, 10, "db2's writes on db1")
    status = db1.replica_status()
    assert status is not None and (status.io_running, status.sql_running) == ("Yes", "Yes")
    assert db1.read_only()
    assert int(str(db1.semi_sync_status()["primary_enabled"])) == 0  # no longer a lossless primary
    assert status_var(lab, "db1", "Rpl_semi_sync_master_no_tx") == "0"  # every db1 commit was acked

    # --- second failover: db2 fenced, db3 promoted, db1 follows db3 ---
    db2.fence()
    db3.promote(semi_sync=TEST_SEMI_SYNC)
    db1.repoint(primary_address(lab, "db3"), db3.gtid_positions().binlog_state, semi_sync_replica=True)
    db3.write_fencing_token(8, "agent-db3", read_timeout_s=15.0)  # db1 acknowledges it
    last = sql(lab, "db3")
    run(last, "INSERT INTO dbtest.t VALUES (8, 'db3')")
    last.close()
    poll(lambda: count_rows(lab, "db1", "origin = 'db3'") == 1, 10, "db3's write on db1")

    # --- a write lands on the fenced db2 (what the gate exists to prevent): db2 is refused ---
    # (fence left db2's lossless semi-sync on, so a stray commit would wait for an ack forever;
    # switch it off to let one land, as on a primary running without lossless mode)
    db2.set_semi_sync_primary(None)
    stray = sql(lab, "db2")  # the agent account writes through read_only
    run(stray, "INSERT INTO dbtest.t VALUES (9, 'stray')")
    stray_gtid = Gtid.parse(str(one(stray, "SELECT @@gtid_binlog_pos AS p")["p"]))
    stray.close()
    assert stray_gtid.server_id == 2
    with pytest.raises(ErrantTransactionsError) as errant:
        db2.rejoin(primary_address(lab, "db3"), db3.gtid_positions().binlog_state, semi_sync_replica=True)
    assert f"errant GTIDs {stray_gtid} (per server:" in str(errant.value)
    assert errant.value.gtids == (stray_gtid,)  # exactly the stray write, read from db2's binlog
    assert [(r.domain, r.server_id, r.last_seq) for r in errant.value.errant] == [(0, 2, stray_gtid.seq)]
    assert db2.replica_status() is None  # refused before touching replication
    assert db2.read_only()

    # --- the fencing token never goes backwards ---
    with pytest.raises(StaleFencingTokenError):
        db3.write_fencing_token(7, "agent-db2")
    db3.write_fencing_token(9, "agent-db3")
    poll(lambda: (actions(lab, "db1").read_fencing_token() or token).token == 9, 10, "token 9 on db1")


def test_fence_is_not_held_up_by_a_commit_waiting_for_a_semi_sync_ack(lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=1)
    db1 = actions(lab, "db1")
    admin = sql(lab, "db1")
    run(admin, "CREATE DATABASE dbtest")
    run(admin, "CREATE TABLE dbtest.t (id INT PRIMARY KEY, origin VARCHAR(10))")
    admin.close()
    db1.set_semi_sync_primary(TEST_SEMI_SYNC)  # no replica at all: every commit waits for an ack
    writer = sql(lab, "db1", account="app")
    thread, errors = in_thread(lambda: run(writer, "INSERT INTO dbtest.t VALUES (1, 'waiting')"))
    poll(
        lambda: status_var(lab, "db1", "Rpl_semi_sync_master_wait_sessions") == "1",
        10,
        "the commit to wait for an ack",
    )
    started = time.monotonic()
    killed = db1.fence()
    assert time.monotonic() - started < 5  # not the 60 s semi-sync timeout
    assert [k.user for k in killed] == ["app"]
    thread.join(5)
    assert not thread.is_alive()
    assert errors and isinstance(errors[0], pymysql.err.MySQLError)  # the client got no OK
    assert db1.read_only()


def test_fence_of_a_hung_mysqld_fails_fast(lab_factory: LabFactory) -> None:
    """The lock is released only once the fence is done or mysqld is seen unreachable: a hung
    mysqld must cost one short timeout, not three 5 s handshakes (measured: ~13 s before)."""
    lab = lab_factory(mysql_count=1)
    db1 = actions(lab, "db1")
    assert db1.server_version()  # connected once while it answers
    lab.kill_mysql("db1", signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(MysqlAdapterError):
            db1.fence(timeout_s=1.0)
        elapsed = time.monotonic() - started
    finally:
        lab.kill_mysql("db1", signal.SIGCONT)
    assert elapsed < 3.0, f"fence of a hung mysqld took {elapsed:.2f} s"
    db1.fence()  # once it answers again, the same call completes
    assert db1.read_only()


def test_promote_and_repoint_do_not_wait_on_a_frozen_primary(lab_factory: LabFactory) -> None:
    """A frozen primary host leaves the replicas' IO threads blocked on a silent socket; STOP
    SLAVE alone would wait for the server's second stop signal, 2 s later, on every replica."""
    lab = lab_factory(mysql_count=3)
    db2, db3 = actions(lab, "db2"), actions(lab, "db3")
    primary = sql(lab, "db1")
    seed_one_row_on_every_replica(lab, primary)
    primary.close()
    lab.kill_mysql("db1", signal.SIGSTOP)
    try:
        started = time.monotonic()
        db2.promote(semi_sync=None)
        db3.repoint(primary_address(lab, "db2"), db2.gtid_positions().binlog_state, semi_sync_replica=False)
        elapsed = time.monotonic() - started
    finally:
        lab.kill_mysql("db1", signal.SIGCONT)
    assert elapsed < 1.5, f"promote + repoint took {elapsed:.2f} s"  # each takes ms; 2 s if blocked
    for node in (db2, db3):
        assert node.server_version()  # still answering
    status = db3.replica_status()
    assert status is not None and status.last_io_errno == 0 and status.primary_port == lab.node("db2").port
    new_primary = sql(lab, "db2")
    run(new_primary, "INSERT INTO dbtest.t VALUES (2, 'db2')")
    new_primary.close()
    poll(lambda: count_rows(lab, "db3", "origin = 'db2'") == 1, 10, "db2's write on db3")


def test_stop_receiving_from_a_frozen_source_keeps_applying_the_relay_log(lab_factory: LabFactory) -> None:
    """A replica whose source lost the lock stops its IO thread (at once, even with the source
    frozen) but still applies what it received; a source thawed later ships nothing more to it,
    and repointing to the same source resumes replication."""
    lab = lab_factory(mysql_count=3)
    db1, db3 = actions(lab, "db1"), actions(lab, "db3")
    primary = sql(lab, "db1")
    seed_one_row_on_every_replica(lab, primary)
    # Hold db3's applier on a row lock, so the next event sits received but unapplied.
    blocker = sql(lab, "db3")
    run(blocker, "BEGIN")
    run(blocker, "SELECT * FROM dbtest.t WHERE id = 1 FOR UPDATE")
    run(primary, "UPDATE dbtest.t SET origin = 'db1-upd' WHERE id = 1")
    wanted = db1.gtid_positions().binlog_pos
    poll_received(db3, wanted, "the update in db3's relay log")
    assert count_rows(lab, "db3", "origin = 'db1-upd'") == 0  # not applied yet
    lab.kill_mysql("db1", signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert db3.stop_receiving()
        elapsed = time.monotonic() - started
    finally:
        lab.kill_mysql("db1", signal.SIGCONT)
    assert elapsed < 1.5, f"stop_receiving took {elapsed:.2f} s"  # ms; 2 s if blocked on the socket
    status = db3.replica_status()
    assert status is not None and status.io_running == "No" and status.sql_running == "Yes"
    assert not db3.stop_receiving()  # idempotent: nothing left to stop
    # The thawed source writes on; db2 gets it, db3 no longer receives anything from it.
    run(primary, "INSERT INTO dbtest.t VALUES (2, 'late')")
    poll(lambda: count_rows(lab, "db2", "id = 2") == 1, 10, "the late row on db2")
    status = db3.replica_status()
    assert status is not None and status.io_running == "No"
    assert GtidPosition.parse(status.received_gtid_pos) == wanted
    # The relay log is still applied once the applier is free.
    run(blocker, "ROLLBACK")
    blocker.close()
    poll(lambda: count_rows(lab, "db3", "origin = 'db1-upd'") == 1, 10, "the received update applied on db3")
    assert count_rows(lab, "db3", "id = 2") == 0
    # The same source is the primary again: repointing to it resumes and fetches the rest.
    db3.repoint(primary_address(lab, "db1"), db1.gtid_positions().binlog_state, semi_sync_replica=False)
    poll(lambda: count_rows(lab, "db3", "id = 2") == 1, 10, "the late row on db3 after repointing")
    primary.close()


def test_repoint_applies_the_relay_log_before_change_master_deletes_it(lab_factory: LabFactory) -> None:
    """Soak seed 11 (item G): a replica with a blocked applier held received, acknowledged
    commits; its repoint's CHANGE MASTER deleted them, the new primary failed, and the replica was
    then promoted without them. The repoint now applies the relay log first, or fails with the
    relay log kept and the applier running, so the commits land even if the new primary is gone."""
    lab = lab_factory(mysql_count=3)
    db1, db2, db3 = actions(lab, "db1"), actions(lab, "db2"), actions(lab, "db3")
    primary = sql(lab, "db1")
    seed_one_row_on_every_replica(lab, primary)
    blocker = sql(lab, "db3")
    run(blocker, "BEGIN")
    run(blocker, "SELECT * FROM dbtest.t WHERE id = 1 FOR UPDATE")
    run(primary, "UPDATE dbtest.t SET origin = 'db1-upd' WHERE id = 1")
    primary.close()
    wanted = db1.gtid_positions().binlog_pos
    poll_received(db3, wanted, "the update in db3's relay log")
    poll(lambda: count_rows(lab, "db2", "origin = 'db1-upd'") == 1, 10, "the update on db2")
    db2.promote(semi_sync=None)
    db2_state = db2.gtid_positions().binlog_state
    with pytest.raises(GtidWaitTimeoutError, match="did not apply its relay log"):
        db3.repoint(primary_address(lab, "db2"), db2_state, semi_sync_replica=False, apply_timeout_s=0.5)
    assert count_rows(lab, "db3", "origin = 'db1-upd'") == 0  # still blocked, but kept:
    lab.kill_mysql("db2", signal.SIGSTOP)  # the new primary fails before db3 could fetch it again
    try:
        run(blocker, "ROLLBACK")
        blocker.close()
        poll(lambda: count_rows(lab, "db3", "origin = 'db1-upd'") == 1, 10, "db3's own relay log applied")
    finally:
        lab.kill_mysql("db2", signal.SIGCONT)
    db3.repoint(primary_address(lab, "db2"), db2_state, semi_sync_replica=False)
    status = db3.replica_status()
    assert status is not None and status.primary_port == lab.node("db2").port
    assert status.using_gtid == "Slave_Pos"
    new_primary = sql(lab, "db2")
    run(new_primary, "INSERT INTO dbtest.t VALUES (2, 'db2')")
    new_primary.close()
    poll(lambda: count_rows(lab, "db3", "origin = 'db2'") == 1, 10, "db2's write on db3")


def test_promoting_a_delayed_replica_applies_its_relay_log_at_once(lab_factory: LabFactory) -> None:
    """A replica applying an hour behind (MASTER_DELAY) still acknowledges on receipt, so it may
    be the one node holding the last commits: promoting it lifts the delay without discarding
    the relay log, and the commits are there within seconds instead of an hour."""
    lab = lab_factory(mysql_count=2)
    db1, db2 = actions(lab, "db1"), actions(lab, "db2")
    primary = sql(lab, "db1")
    create_test_table(primary)
    poll(lambda: count_rows(lab, "db2") == 0 and db2.replica_status() is not None, 10, "the table on db2")
    delay_applier(lab, "db2", 3600)
    for i in range(1, 4):
        run(primary, "INSERT INTO dbtest.t VALUES (%s, 'db1')", (i,))
    primary.close()
    wanted = db1.gtid_positions().binlog_pos
    poll_received(db2, wanted, "the inserts in db2's relay log")
    assert count_rows(lab, "db2") == 0  # held back by the delay
    started = time.monotonic()
    db2.promote(semi_sync=None, apply_relay_log_timeout_s=10.0)
    elapsed = time.monotonic() - started
    assert count_rows(lab, "db2") == 3
    assert elapsed < 5, f"promotion took {elapsed:.2f} s"
    assert db2.replica_status() is None
    assert not db2.lift_apply_delay()  # nothing to lift on a primary


def test_repointing_a_delayed_replica_does_not_wait_out_its_delay(lab_factory: LabFactory) -> None:
    """The repoint applies the relay log first only for undelayed replicas: a replica applying an
    hour behind (MASTER_DELAY) would otherwise stay off replication for that hour."""
    lab = lab_factory(mysql_count=3)
    db1, db2, db3 = actions(lab, "db1"), actions(lab, "db2"), actions(lab, "db3")
    primary = sql(lab, "db1")
    seed_one_row_on_every_replica(lab, primary)
    delay_applier(lab, "db3", 3600)
    run(primary, "INSERT INTO dbtest.t VALUES (2, 'db1')")
    primary.close()
    wanted = db1.gtid_positions().binlog_pos
    poll_received(db3, wanted, "the insert in db3's relay log")
    poll(lambda: count_rows(lab, "db2", "id = 2") == 1, 10, "the insert on db2")
    db2.promote(semi_sync=None)
    started = time.monotonic()
    db3.repoint(primary_address(lab, "db2"), db2.gtid_positions().binlog_state, semi_sync_replica=False,
                apply_timeout_s=0.5)
    assert time.monotonic() - started < 5
    status = db3.replica_status()
    assert status is not None and status.primary_port == lab.node("db2").port and status.apply_delay_s == 3600
    assert count_rows(lab, "db3", "id = 2") == 0  # still held back by the delay, as intended

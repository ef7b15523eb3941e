"""Issue 16 on real MariaDB 10.11: a token discard that stops between ``RESET MASTER`` and
``SET gtid_slave_pos`` (the agent or mysqld dying there) leaves an empty binlog and the
``gtid_slave_pos`` of before, which no longer says what the tables hold. Its intent file lets the
agent finish it before any errant check, or refuse, saying why, when something wrote since.

The node here did more than the soak's case (whose stale position happens to be the right one): db2
was primary for a term that db1 followed (token 7 and a client row, acknowledged), then for one
nobody followed (token 8, committed unacknowledged). The position before token 8 is db2's client
row, while its ``gtid_slave_pos`` still says db1's token 5."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from dbfence.agent.repair_keeper import RepairKeeper
from dbfence.agent.sensors import DbSensor, PeerDatabase
from dbfence.lab.cluster import LabCluster
from dbfence.mysql.discard_intent import DiscardRefused, intent_path, load_intent, settle
from dbfence.mysql.errors import MysqlAdapterError
from dbfence.mysql.gtid import GtidState
from dbfence.mysql.probes import Role
from dbfence.mysql.repair import MysqldControl, kill_mysqld, start_mysqld, truncate_unacknowledged
from dbfence.mysql.repair_errors import RepairError
from dbfence.mysql.token_writer import FencingTokenWriter
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import (
    actions,
    creds,
    monitor,
    one,
    poll,
    primary_address,
    recovery_control,
    run,
    sql,
)
from tests.mysql.test_mysql_repair_lab import innodb_log_flushed, rows
from tests.mysql.test_mysql_repair_token_lab import db2_promoted_after_db1s_token_5, history_rows, token_row


class Stopped(Exception):
    """The agent's death at a step of the discard, as the discard's seam raises it."""


def stop_at(step: str) -> Callable[[str], None]:
    def seam(done: str) -> None:
        if done == step:
            raise Stopped(step)
    return seam


def semi_sync_clients(lab: LabCluster, name: str) -> int:
    with contextlib.closing(sql(lab, name)) as conn:
        return int(str(one(conn, "SHOW STATUS LIKE 'Rpl_semi_sync_master_clients'")["Value"]))


def db2_two_terms_the_second_unfollowed(lab_factory: LabFactory) -> tuple[LabCluster, str, str]:
    """db2 primary twice: token 7 and row 2 acknowledged by db1, then token 8 nobody received;
    db1 primary again with token 9 and rows 3, 4; db2 fenced. Returns the lab, db2's position
    before token 8 (the discard's target) and its gtid_slave_pos."""
    lab, db1, db2 = db2_promoted_after_db1s_token_5(lab_factory)
    db1.rejoin(primary_address(lab, "db2"), db2.gtid_positions().history, semi_sync_replica=True)
    poll(lambda: semi_sync_clients(lab, "db2") == 1, 30, "db1 to acknowledge db2")
    writer = FencingTokenWriter(db2, "agent-db2", wait_s=60.0, ack_wait_s=1.0)
    poll(partial(writer.ensure, 7), 30, "token 7, acknowledged")
    run(sql(lab, "db2", account="app"), "INSERT INTO app.t VALUES (2, 'db2 first term')")
    target = str(db2.gtid_positions().binlog_pos)
    poll(lambda: (2, "db2 first term") in rows(lab, "db1"), 30, "db1 to apply db2's row")
    run(sql(lab, "db1"), "STOP SLAVE")
    poll(lambda: semi_sync_clients(lab, "db2") == 0, 30, "db1 to stop acknowledging")
    assert not writer.ensure(8)
    poll(partial(writer.ensure, 8), 30, "token 8's ack wait to be ended")
    with contextlib.closing(sql(lab, "db2")) as conn:
        poll(lambda: innodb_log_flushed(conn), 30, "InnoDB to flush its redo log")
    db2.fence()
    db1.promote(semi_sync=None)  # nothing of token 8 received (its IO thread stopped before)
    db1.write_fencing_token(9, "agent-db1")
    run(sql(lab, "db1", account="app"), "INSERT INTO app.t VALUES (3, 'after the failover')")
    run(sql(lab, "db1", account="app"), "INSERT INTO app.t VALUES (4, 'and another')")
    slave_pos = str(db2.gtid_positions().slave_pos)
    assert target.startswith("0-2-") and slave_pos.startswith("0-1-"), (target, slave_pos)
    return lab, target, slave_pos


def interrupted_repair(lab: LabCluster, state_dir: Path, step: str = "binlog reset", *,
                       kill_mysqld_there: bool = False) -> None:
    """db2's repair (kill, recovery, discard of token 8), stopped right after ``step``: the agent
    dying there, or (``kill_mysqld_there``) mysqld, SIGKILLed and started again."""
    control = recovery_control(lab, "db2")

    def kill(done: str) -> None:
        if done == step:
            kill_mysqld(control.pid_file)
    if kill_mysqld_there:
        with pytest.raises(MysqlAdapterError):  # the SET, on a connection whose mysqld is gone
            truncate_unacknowledged(actions(lab, "db2"), control, lambda: primary_state(lab),
                                    state_dir / "errant-db2.sql", "-- dbfence test excerpt\n", step_done=kill)
        start_mysqld(control, actions(lab, "db2"))
        return
    with pytest.raises(Stopped):
        truncate_unacknowledged(actions(lab, "db2"), control, lambda: primary_state(lab),
                                state_dir / "errant-db2.sql", "-- dbfence test excerpt\n",
                                step_done=stop_at(step))


def primary_state(lab: LabCluster) -> GtidState:
    return actions(lab, "db1").gtid_positions().history


def keeper_of(lab: LabCluster, state_dir: Path) -> RepairKeeper:
    node = lab.node("db2")
    return RepairKeeper(mode="truncate", state_dir=state_dir, node="db2", mysql=actions(lab, "db2"),
                        control=MysqldControl(pid_file=Path(node.pid_file), start_command=["false"]))


def sensor_of(lab: LabCluster, keeper: RepairKeeper) -> DbSensor:
    """db2's database sensor as the agent wires it, its errant checks against db1."""
    sensor = DbSensor(monitor(lab, "db2", Role.REPLICA), actions(lab, "db2"), creds(lab), threading.Event())
    sensor.settle_discard = keeper.settle_discard
    node = lab.node("db1")
    sensor.follow(PeerDatabase("db1", node.host, node.port), lambda host, port: None)
    return sensor


SET_LEFT = "finished (binlog state and gtid_slave_pos set after its RESET MASTER)"


@pytest.mark.parametrize(("step", "kill_mysqld_there", "done"), [
    ("binlog reset", False, SET_LEFT),
    ("binlog reset", True, SET_LEFT),
    ("rows deleted", False, "redone (rows deleted, RESET MASTER, binlog state and gtid_slave_pos set)"),
], ids=["agent stopped after RESET MASTER", "mysqld killed after RESET MASTER", "agent stopped before it"])
def test_a_discard_stopped_half_way_is_finished_and_the_node_rejoins(
        lab_factory: LabFactory, tmp_path: Path, step: str, kill_mysqld_there: bool, done: str) -> None:
    lab, target, slave_pos = db2_two_terms_the_second_unfollowed(lab_factory)
    db2 = actions(lab, "db2")
    interrupted_repair(lab, tmp_path, step, kill_mysqld_there=kill_mysqld_there)

    positions = db2.gtid_positions()
    if step == "binlog reset":
        # The window: binlog empty, the old gtid_slave_pos; nothing errant, so a repoint would go ahead.
        assert (str(positions.binlog_state), str(positions.slave_pos)) == ("", slave_pos) != ("", target)
        assert positions.history.errant_against(primary_state(lab)) == ()
    else:  # token 8 still in the binlog: errant
        assert str(positions.binlog_state).endswith(f"0-2-{int(target.split('-')[2]) + 1}"), positions
    intent = load_intent(tmp_path)
    assert intent is not None and (intent.target, intent.slave_pos_before) == (target, slave_pos), intent
    assert intent.history_tokens == (8,) and intent.server_id == 2
    assert history_rows(lab, "db2") == [(5, 1), (7, 2)]  # token 8's row went first

    # The agent's errant check finishes the discard first, and waits this round.
    keeper = keeper_of(lab, tmp_path)
    sensor = sensor_of(lab, keeper)
    check, pending = sensor._errant_check(db2.gtid_positions())
    assert check is None and pending == (f"token discard {intent.gtids} {done}: gtid_slave_pos = {target}; "
                       "checked again next round")
    assert not intent_path(tmp_path).exists()
    positions = db2.gtid_positions()
    assert (str(positions.binlog_state), str(positions.slave_pos)) == (intent.target_state, target)
    # The state without the token: db1's stream and db2's first term, as before it.
    assert dict(positions.binlog_state.streams) == {(0, 1): positions.binlog_state.streams[(0, 1)],
                                                    (0, 2): int(target.split("-")[2])}, positions
    check, pending = sensor._errant_check(db2.gtid_positions())  # the next round's check, clean
    assert check is not None and check.clean and pending == "", (check, pending)

    db1_state = primary_state(lab)
    db2.rejoin(primary_address(lab, "db1"), db1_state, semi_sync_replica=False)
    expected = [(1, "acknowledged"), (2, "db2 first term"), (3, "after the failover"), (4, "and another")]
    poll(lambda: rows(lab, "db2") == expected, 30, "db2 to replicate db1's rows")
    assert token_row(lab, "db2") == (9, 1) == token_row(lab, "db1")
    assert history_rows(lab, "db2") == [(5, 1), (7, 2), (9, 1)] == history_rows(lab, "db1")
    status = db2.replica_status()
    assert status is not None and status.problem == "", status
    run(sql(lab, "db1", account="app"), "INSERT INTO app.t VALUES (5, 'after the rejoin')")
    poll(lambda: (5, "after the rejoin") in rows(lab, "db2"), 30, "db2 to keep replicating")


def test_a_write_after_the_reset_is_not_guessed_at(lab_factory: LabFactory, tmp_path: Path) -> None:
    lab, target, slave_pos = db2_two_terms_the_second_unfollowed(lab_factory)
    db2 = actions(lab, "db2")
    interrupted_repair(lab, tmp_path)
    db2.set_semi_sync_primary(None)
    run(sql(lab, "db2"), "INSERT INTO app.t VALUES (9, 'written after the reset')")  # through read_only
    written = str(db2.gtid_positions().binlog_state)
    assert written.startswith("0-2-"), written

    with pytest.raises(DiscardRefused) as refused:
        settle(db2, tmp_path, primary_state(lab))
    why = str(refused.value)
    print(f"\nrefused: {why}")
    assert why.startswith(f"{intent_path(tmp_path)} names a token discard (")
    assert (f"gtid_binlog_state is {written}, neither empty or " in why
            and "(reset by the discard) nor " in why)
    assert "something wrote since" in why and f"target: {target}" in why
    keeper = keeper_of(lab, tmp_path)
    sensor = sensor_of(lab, keeper)
    for _ in range(2):  # the errant check waits, saying why (the node stays fenced), round after round
        assert sensor._errant_check(db2.gtid_positions()) == (None, why)
    with pytest.raises(RepairError, match="something wrote since"):  # and so does a repair attempt
        keeper._attempt("no evidence recorded", lambda: primary_state(lab), tmp_path / "errant-2.sql", "")
    assert intent_path(tmp_path).exists()  # kept for the operator
    after = db2.gtid_positions()
    assert (str(after.binlog_state), str(after.slave_pos)) == (written, slave_pos)  # nothing changed

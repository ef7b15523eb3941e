"""The binlog state of a mysqld down after a crash, read from its files while nothing starts it
(issue 16, soak seed 443): the restarter says when (``down_after_crash``), the reader reads once
and drops it the moment mysqld may run; the repair keeper's view hands it to the core. No server:
the read is played (the lab test reads real files: tests/mysql/test_binlog_on_disk_lab.py)."""

from __future__ import annotations

import threading
from pathlib import Path

from dbfence.agent.binlog_on_disk_reader import DiskStateReader
from dbfence.agent.gtid import BinlogState
from dbfence.agent.mysqld_restarter import MysqldRestarter
from dbfence.agent.state import Role
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.binlog_on_disk import DiskBinlogState
from dbfence.mysql.gtid import GtidState
from dbfence.mysql.repair import MysqldControl
from dbfence.mysql.repair_errors import RepairError
from tests.agent.test_repair_keeper_killed_state import restarted_agent
from tests.agent.test_restart_rule import NO_MYSQL

LOCATION = ("/var/lib/mysql/mysql-bin", "/var/lib/mysql/")
ON_DISK = DiskBinlogState(GtidState.parse("0-1-51565,0-2-47898,0-3-36840"), 1,
                          Path("/var/lib/mysql/mysql-bin.000007"))


def test_read_while_down_after_a_crash_dropped_while_a_start_runs_and_read_again_after_it_failed(
        tmp_path: Path) -> None:
    pid_file = tmp_path / "mysqld.pid"
    pid_file.write_text("999999999\n")  # a crash leaves it
    now = [1000.0]
    start_may_end = threading.Event()

    def start(control: MysqldControl, mysql: MysqlActions) -> None:
        start_may_end.wait(10)
        pid_file.unlink(missing_ok=True)  # the start removed the stale one; the abort writes none
        raise RepairError("exited during start")

    restarter = MysqldRestarter(mode="truncate", node="db1", clock=lambda: now[0], start=start,
                                control=MysqldControl(pid_file=pid_file, start_command=["true"]),
                                mysql=NO_MYSQL)
    reads: list[tuple[str, str, str]] = []

    def read(tool: str, base: str, datadir: str) -> DiskBinlogState:
        reads.append((tool, base, datadir))
        return ON_DISK

    reader = DiskStateReader(node="db1", tool="mariadb-binlog", location=lambda: LOCATION,
                             clock=lambda: now[0], read=read)

    def round_(live: tuple[str, ...] = ()) -> None:
        restarter.tick(Role.REPLICA, killed_by_fence=False, repair_running=False)
        reader.tick(down=restarter.down_after_crash, live=live)
        reader.join(10)

    # While it ran: the state and position read last (a rebuild's gtid_slave_pos in no binlog file).
    reader.tick(down=False, live=("0-1-51000,0-2-47898", "5-9-3"))
    round_()  # the crash seen: read once, merged with what it last said
    assert reads == [("mariadb-binlog", *LOCATION)]
    state, server_id = reader.view()
    assert str(state) == "0-1-51565,0-2-47898,0-3-36840,5-9-3" and server_id == 1
    round_()
    assert len(reads) == 1  # once per crash
    now[0] += 0.5
    restarter.tick(Role.REPLICA, killed_by_fence=False, repair_running=False)  # the start begins
    assert restarter.starting and not restarter.down_after_crash
    reader.tick(down=restarter.down_after_crash)
    assert reader.view() == (None, None)  # mysqld may run any moment: dropped
    start_may_end.set()
    restarter.join(10)
    round_()  # the start failed (no pid file left): down again, not run since, read again
    assert restarter.status()["failed_starts"] == 1 and restarter.down_after_crash
    assert reader.view()[0] is not None and len(reads) == 2
    # Killed by the fence: the fence's own state at the kill goes out instead.
    restarter.tick(Role.FENCED, killed_by_fence=True, repair_running=False)
    assert not restarter.down_after_crash


def test_a_read_that_ends_after_mysqld_may_run_is_thrown_away_and_failures_back_off() -> None:
    now = [0.0]
    release = threading.Event()
    outcomes: list[DiskBinlogState | RepairError] = [ON_DISK, RepairError("no Gtid list"), ON_DISK]

    def read(tool: str, base: str, datadir: str) -> DiskBinlogState:
        release.wait(10)
        outcome = outcomes.pop(0)
        if isinstance(outcome, RepairError):
            raise outcome
        return outcome

    reader = DiskStateReader(node="db1", tool="t", location=lambda: LOCATION, clock=lambda: now[0], read=read)
    reader.tick(down=True)
    reader.tick(down=False)  # mysqld may run now; the read still runs
    release.set()
    reader.join(10)
    assert reader.view() == (None, None)
    reader.tick(down=True)
    reader.join(10)
    assert reader.view() == (None, None)  # failed: retried after the backoff, not every round
    reader.tick(down=True)
    reader.join(10)
    assert len(outcomes) == 1
    now[0] += 4.0
    reader.tick(down=True)
    reader.join(10)
    assert reader.view()[1] == 1 and not outcomes


def test_never_a_state_without_the_binlogs_location() -> None:
    reader = DiskStateReader(node="db1", tool="t", location=lambda: None, read=lambda *_: ON_DISK)
    reader.tick(down=True)
    reader.join(10)
    assert reader.view() == (None, None)


def test_the_repair_keepers_view_hands_the_state_on_disk_to_the_core(tmp_path: Path) -> None:
    keeper = restarted_agent(tmp_path)
    assert keeper.view().binlog_state_on_disk is None
    state = BinlogState.parse("0-1-5")
    keeper.on_disk = lambda: (state, 1)
    view = keeper.view()
    assert view.binlog_state_on_disk == state and view.server_id_on_disk == 1 and not view.awaiting_restart

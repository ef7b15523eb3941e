"""Table tests of the rule that starts a mysqld that crashed on its own (restart_rule), and of the
restarter's backoff with a start command that fails, then works (no server needed)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import pytest

from dbfence.agent.mysqld_restarter import FAILED_MARKER, MysqldRestarter
from dbfence.agent.restart_rule import MAX_DELAY, CrashView, next_delay, restart_hold, save_tail_first
from dbfence.agent.state import Role
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.connection import Endpoint
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.error_log import start_failure
from dbfence.mysql.repair import MysqldControl
from dbfence.mysql.repair_errors import RepairDeferred, RepairError

NO_MYSQL = MysqlActions(Endpoint("127.0.0.1", 9), Credentials("u", "p"), name="db2")  # never reached
CRASHED_REPLICA = CrashView(mode="truncate", role=Role.REPLICA, running=False, pid_file_left=True,
                            killed_by_fence=False, repair_running=False)



def tick_and_join(restarter: MysqldRestarter, role: Role = Role.REPLICA, *, check_done: bool = True) -> None:
    """One round of the agent's loop, then the start (or copy) it began, to its end; with
    ``check_done``, the restarter must say it is no longer starting."""
    restarter.tick(role, killed_by_fence=False, repair_running=False)
    restarter.join(10)
    if check_done:
        assert not restarter.starting


@dataclass(frozen=True)
class Case:
    name: str
    view: CrashView
    hold: str | None  # a fragment of the reason; None: start it


CASES = [
    Case("a replica's mysqld crashed (pid file left): start it", CRASHED_REPLICA, None),
    Case("the same in rebuild mode", replace(CRASHED_REPLICA, mode="rebuild"), None),
    Case("running: nothing to do", replace(CRASHED_REPLICA, running=True), "running"),
    Case("an unreadable pid file: not known to be down, never started", replace(
        CRASHED_REPLICA, pid_file_readable=False), "cannot be read"),
    Case("manual mode: systemd restarts it", replace(CRASHED_REPLICA, mode="manual"), "systemd's Restart="),
    Case("killed by the fence: only the repair starts it", replace(CRASHED_REPLICA, killed_by_fence=True),
         "only the repair"),
    Case("a repair is running (it stops and starts mysqld itself)",
         replace(CRASHED_REPLICA, repair_running=True), "repair is running"),
    Case("stopped cleanly (no pid file): an operator's stop is left alone",
         replace(CRASHED_REPLICA, pid_file_left=False), "operator's stop"),
    Case("never the primary: it fails over", replace(CRASHED_REPLICA, role=Role.PRIMARY),
         "crashed while primary"),
    Case("a fenced former primary: not before the binlog files recovery reads are copied",
         replace(CRASHED_REPLICA, role=Role.FENCED), "copied first"),
    Case("a fenced former primary whose binlog tail is copied: start it",
         replace(CRASHED_REPLICA, role=Role.FENCED, tail_saved=True), None),
    Case("the same in rebuild mode",
         replace(CRASHED_REPLICA, role=Role.FENCED, mode="rebuild", tail_saved=True), None),
    Case("a former primary whose agent restarted (REPLICA, fence pending): the copy first (seed 423)",
         replace(CRASHED_REPLICA, former_primary=True), "copied first"),
    Case("the same, copied: start it", replace(CRASHED_REPLICA, former_primary=True, tail_saved=True), None),
    Case("a fence pending never starts a crashed primary",
         replace(CRASHED_REPLICA, role=Role.PRIMARY, former_primary=True, tail_saved=True),
         "crashed while primary"),
    Case("a fenced node stopped cleanly: left alone, copy or not",
         replace(CRASHED_REPLICA, role=Role.FENCED, pid_file_left=False), "operator's stop"),
    Case("a fenced node the fence killed: only the repair starts it, copy or not",
         replace(CRASHED_REPLICA, role=Role.FENCED, killed_by_fence=True, tail_saved=True),
         "only the repair"),
    Case("a copied tail starts no primary", replace(CRASHED_REPLICA, role=Role.PRIMARY, tail_saved=True),
         "crashed while primary"),
    Case("a fenced node whose start failed (and left no pid file): no operator's "
         "stop, start it again (seed 443)",
         replace(CRASHED_REPLICA, role=Role.FENCED, pid_file_left=False, tail_saved=True, start_failed=True),
         None),
    Case("a replica whose start failed: start it again",
         replace(CRASHED_REPLICA, pid_file_left=False, start_failed=True), None),
    Case("a failed start still starts no primary",
         replace(CRASHED_REPLICA, role=Role.PRIMARY, pid_file_left=False, start_failed=True),
         "crashed while primary"),
    Case("a failed start never overrides the fence's kill",
         replace(CRASHED_REPLICA, role=Role.FENCED, killed_by_fence=True, pid_file_left=False,
                 start_failed=True, tail_saved=True), "only the repair"),
    Case("a failed start of a fenced node whose tail is not copied: the copy first",
         replace(CRASHED_REPLICA, role=Role.FENCED, pid_file_left=False, start_failed=True), "copied first"),
    Case("not during a role change", replace(CRASHED_REPLICA, role=Role.PROMOTING),
         "crashed while promoting"),
    Case("not while the agent starts", replace(CRASHED_REPLICA, role=Role.STARTING),
         "crashed while starting"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_restart_rule(case: Case) -> None:
    hold = restart_hold(case.view)
    if case.hold is None:
        assert hold is None
    else:
        assert hold is not None and case.hold in hold
    # The copy is asked for exactly when it is what stands between the crash and the start.
    assert save_tail_first(case.view) == (case.hold == "copied first")


def test_the_backoff_doubles_to_a_minute_and_never_overflows() -> None:
    assert [next_delay(n) for n in range(7)] == [0.5, 4.0, 8.0, 16.0, 32.0, MAX_DELAY, MAX_DELAY]
    assert next_delay(10_000) == MAX_DELAY


def test_the_restarter_backs_off_while_starts_fail_and_starts_once_when_they_work(tmp_path: Path) -> None:
    pid_file = tmp_path / "mysqld.pid"
    pid_file.write_text("999999999\n")  # a crash leaves it, naming a process that is gone
    now = [1000.0]
    no_space = RepairError("start command exited 1: no space")
    outcomes: list[RepairError | None] = [no_space, no_space, None]
    calls: list[float] = []

    def start(control: MysqldControl, mysql: MysqlActions) -> None:
        calls.append(now[0])
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    restarter = MysqldRestarter(mode="truncate", node="db2", clock=lambda: now[0], start=start,
                                control=MysqldControl(pid_file=pid_file, start_command=["true"]),
                                mysql=NO_MYSQL)

    tick = partial(tick_and_join, restarter)

    tick()  # seen: the first start waits FIRST_START_DELAY
    assert calls == [] and restarter.status()["next_start_in_s"] == 0.5
    now[0] += 0.5
    tick()
    assert calls == [1000.5]
    status = restarter.status()
    assert status["failed_starts"] == 1 and "no space" in status["last_error"]
    assert status["next_start_in_s"] == 4.0
    now[0] += 3.9
    tick()
    assert calls == [1000.5]  # backing off
    now[0] += 0.1
    tick()
    assert calls == [1000.5, 1004.5] and restarter.status()["next_start_in_s"] == 8.0
    tick(Role.FENCED)  # fenced meanwhile, and no way to copy the binlog tail: held, says why
    assert "copied first" in restarter.status()["held"]
    now[0] += 8.0
    tick()
    assert calls == [1000.5, 1004.5, 1012.5]
    status = restarter.status()
    assert status["restarts"] == 1 and status["failed_starts"] == 0 and status["down_seconds"] is None


def test_manual_mode_never_starts_mysqld(tmp_path: Path) -> None:
    pid_file = tmp_path / "mysqld.pid"
    pid_file.write_text("999999999\n")
    calls: list[str] = []
    restarter = MysqldRestarter(mode="manual", node="db2", clock=lambda: 0.0,
                                start=lambda control, mysql: calls.append("start"),
                                control=MysqldControl(pid_file=pid_file, start_command=["true"]),
                                mysql=NO_MYSQL)
    for _ in range(3):
        restarter.tick(Role.REPLICA, killed_by_fence=False, repair_running=False)
    assert calls == []


def test_a_start_that_fails_unexpectedly_is_counted_and_backed_off_too(tmp_path: Path) -> None:
    """A start failing with an error of an unexpected type (a bug, a bad setting) must not end
    the start thread without a next start time: every round would start mysqld again."""
    pid_file = tmp_path / "mysqld.pid"
    pid_file.write_text("999999999\n")
    now = [1000.0]
    calls: list[float] = []

    def start(control: MysqldControl, mysql: MysqlActions) -> None:
        calls.append(now[0])
        raise ValueError("unexpected")

    restarter = MysqldRestarter(mode="truncate", node="db2", clock=lambda: now[0], start=start,
                                control=MysqldControl(pid_file=pid_file, start_command=["true"]),
                                mysql=NO_MYSQL)

    tick = partial(tick_and_join, restarter, Role.REPLICA)

    tick()
    now[0] += 2.0
    tick()
    assert calls == [1002.0]
    status = restarter.status()
    assert status["failed_starts"] == 1 and "unexpected" in status["last_error"]
    assert status["next_start_in_s"] == 4.0
    tick()
    tick()
    assert calls == [1002.0]  # backing off, not a start every round


def test_a_fenced_nodes_crashed_mysqld_starts_only_after_its_binlog_tail_is_copied(tmp_path: Path) -> None:
    pid_file = tmp_path / "mysqld.pid"
    pid_file.write_text("999999999\n")
    now = [1000.0]
    events: list[str] = []
    copies: list[str | RepairError] = [RepairDeferred("no room in /var/lib/dbfence"), "/var/lib/dbfence/tail"]

    def save() -> str:
        events.append(f"copy at {now[0]:g}")
        outcome = copies.pop(0)
        if isinstance(outcome, RepairError):
            raise outcome
        return outcome

    restarter = MysqldRestarter(mode="truncate", node="db1", clock=lambda: now[0], save_tail=save,
                                start=lambda control, mysql: events.append(f"start at {now[0]:g}"),
                                control=MysqldControl(pid_file=pid_file, start_command=["true"]),
                                mysql=NO_MYSQL)

    tick = partial(tick_and_join, restarter, Role.FENCED, check_done=False)

    tick()  # the crash seen: copy at once; no room
    assert events == ["copy at 1000"]
    status = restarter.status()
    assert "copied first" in status["held"] and "copy failed: no room" in status["held"]
    assert status["failed_copies"] == 1 and status["binlog_tail_saved"] is None
    now[0] += 3.9
    tick()
    assert events == ["copy at 1000"]  # backing off (4 s)
    now[0] += 0.1
    tick()  # copied; the start waits FIRST_START_DELAY like any other
    assert events == ["copy at 1000", "copy at 1004"]
    assert restarter.status()["binlog_tail_saved"] == "/var/lib/dbfence/tail"
    tick()
    now[0] += 2.0
    tick()
    assert events == ["copy at 1000", "copy at 1004", "start at 1006"]


SEED_443_ERROR_LOG = """\
2026-12-07 21:14:28 1754 [Warning] Aborted connection 1754 to db: 'unconnected' user: 'dbfence_agent'
2026-12-07 21:14:30 0 [Note] Starting MariaDB 10.11.19-MariaDB-0+deb12u1-log as process 24857
2026-12-07 21:14:30 0 [Note] InnoDB: Starting crash recovery from checkpoint LSN=19530628
2026-12-07 21:14:30 0 [Note] InnoDB: End of log at LSN=27207427
2026-12-07 21:14:30 0 [ERROR] InnoDB: Missing FILE_CREATE, FILE_DELETE or FILE_MODIFY before \
FILE_CHECKPOINT for tablespace 19
2026-12-07 21:14:30 0 [ERROR] InnoDB: Plugin initialization aborted with error Data structure corruption
2026-12-07 21:14:30 0 [Note] InnoDB: Starting shutdown...
2026-12-07 21:14:30 0 [ERROR] Plugin 'InnoDB' registration as a STORAGE ENGINE failed.
2026-12-07 21:14:30 0 [ERROR] Unknown/unsupported storage engine: InnoDB
2026-12-07 21:14:30 0 [ERROR] Aborting
"""


def test_a_failed_start_is_retried_with_backoff_and_its_cause_named_not_taken_for_an_operators_stop(
        tmp_path: Path) -> None:
    """Soak seed 443: a fenced former primary's mysqld crashed; its crash recovery fails for good
    (a corrupt redo log), and the failed start leaves no pid file. The restarter took the
    missing pid file for an operator's stop and never tried again, and nobody saw why."""
    pid_file = tmp_path / "mysqld.pid"
    pid_file.write_text("999999999\n")  # the crash leaves it
    error_log = tmp_path / "error.log"
    now = [1000.0]
    calls: list[float] = []
    works = [False, False, True]

    def start(control: MysqldControl, mysql: MysqlActions) -> None:
        calls.append(now[0])
        if not works.pop(0):
            pid_file.unlink(missing_ok=True)  # the start removed the stale one; the abort writes none
            error_log.write_text(SEED_443_ERROR_LOG)
            raise RepairError("start command exited 1: db1 exited during start")

    restarter = MysqldRestarter(mode="truncate", node="db1", clock=lambda: now[0], start=start,
                                save_tail=lambda: "/var/lib/dbfence/tail",
                                start_failure=lambda: start_failure(error_log),
                                control=MysqldControl(pid_file=pid_file, start_command=["true"]),
                                mysql=NO_MYSQL)

    tick = partial(tick_and_join, restarter, Role.FENCED)

    tick()  # the copy of the binlog tail
    tick()  # the crash seen: the first start in 0.5 s
    assert restarter.down_reason() is None
    now[0] += 0.5
    tick()
    assert len(calls) == 1 and not pid_file.exists()
    status = restarter.status()
    assert status["failed_starts"] == 1 and status["next_start_in_s"] == 4.0
    assert status["cause"].startswith("crash recovery failed: InnoDB: Missing FILE_CREATE")
    reason = restarter.down_reason()
    assert reason is not None and "Data structure corruption" in reason and "rebuild" in reason
    now[0] += 1.0
    tick()
    assert status["held"] is None and restarter.status()["held"] is None  # no operator's stop
    now[0] += 3.0
    tick()
    assert len(calls) == 2  # tried again after the backoff
    assert restarter.status()["failed_starts"] == 2 and restarter.status()["next_start_in_s"] == 8.0
    now[0] += 8.0
    tick()  # this start works
    assert len(calls) == 3
    status = restarter.status()
    assert status["restarts"] == 1 and status["failed_starts"] == 0 and status["cause"] is None
    assert restarter.down_reason() is None


def test_an_agent_restarted_after_a_failed_start_keeps_starting_mysqld(tmp_path: Path) -> None:
    """The failed start is kept in the state directory until mysqld runs: a restarted agent that
    finds no pid file does not take it for an operator's stop either (seed 443 with an agent
    restart); once mysqld runs the file goes."""
    pid_file = tmp_path / "mysqld.pid"
    pid_file.write_text("999999999\n")
    marker = tmp_path / FAILED_MARKER
    error_log = tmp_path / "error.log"
    now = [1000.0]
    works = [False]

    def start(control: MysqldControl, mysql: MysqlActions) -> None:
        if not works[0]:
            pid_file.unlink(missing_ok=True)
            error_log.write_text(SEED_443_ERROR_LOG)
            raise RepairError("start command exited 1")

    def agent() -> MysqldRestarter:
        return MysqldRestarter(mode="truncate", node="db1", clock=lambda: now[0], start=start,
                               start_failure=lambda: start_failure(error_log), failed_marker=marker,
                               control=MysqldControl(pid_file=pid_file, start_command=["true"]),
                               mysql=NO_MYSQL)

    tick = partial(tick_and_join, role=Role.REPLICA, check_done=False)

    first = agent()
    tick(first)
    now[0] += 0.5
    tick(first)
    assert first.status()["failed_starts"] == 1 and marker.exists() and not pid_file.exists()
    restarted = agent()  # the agent restarts: no pid file, but the failed start is on record
    tick(restarted)
    status = restarted.status()
    assert status["held"] is None and status["failed_starts"] == 1, status
    assert status["cause"].startswith("crash recovery failed") and restarted.down_after_crash
    works[0] = True
    now[0] += 4.0
    tick(restarted)
    assert restarted.status()["restarts"] == 1 and not marker.exists()
    # Without the record (an operator's clean stop): left alone, as ever.
    fresh = agent()
    tick(fresh)
    assert "operator's stop" in fresh.status()["held"] and not fresh.down_after_crash

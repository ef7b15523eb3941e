"""A FLUSH STATUS during a term never hides a fallback from the repair's evidence, on real MariaDB
10.11; and a primary promoted without a source has semi-sync on before its gate first admits."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pymysql
import pytest

from dbfence.agent.actions import ActionReason, AdmitGate, Repoint
from dbfence.agent.sensors import DcsView
from dbfence.breaker import Admitting
from dbfence.lab.cluster import LabCluster
from dbfence.locks.model import ClusterSnapshot, MemberEntry, MemberRecord
from dbfence.mysql.actions import SemiSyncSettings
from dbfence.mysql.repair_evidence import CounterBaseline
from dbfence.mysql.semi_sync_term import TAINT_FILE, read_baseline, read_counters
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import actions, one, poll, run, sql
from tests.mysql.test_executor_repoint_lab import executor_on
from tests.mysql.test_mysql_repair_lab import NEVER_FALLS_BACK, lab_keeper, lossless_pair

FALLS_BACK_AT_ONCE = SemiSyncSettings(timeout_ms=50)


def status(lab: LabCluster, name: str, variable: str) -> str:
    conn = sql(lab, name)
    try:
        return str(one(conn, f"SHOW GLOBAL STATUS LIKE '{variable}'")["Value"])
    finally:
        conn.close()


def at_the_start_of_a_second() -> None:
    """Return within the first 50 ms of a wall-clock second (the server's clock is this host's)."""
    while time.time() % 1.0 > 0.05:
        time.sleep(0.01)


def fall_back_and_recover(lab: LabCluster, then: str) -> None:
    """A client's commit on db1 falls back to async (db2 receives nothing) and returns OK; ``then``
    runs at once on db1; db2 reconnects and semi-sync is ON again, nothing else committed."""
    run(sql(lab, "db1", account="app"), "INSERT INTO app.t VALUES (2, 'acknowledged asynchronously')")
    run(sql(lab, "db1"), then)
    run(sql(lab, "db2"), "START SLAVE IO_THREAD")
    poll(lambda: status(lab, "db1", "Rpl_semi_sync_master_status") == "ON", 60, "semi-sync to be on again")


def test_a_fallback_flushed_in_the_second_of_the_reference_still_refuses_truncation(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    """The hole seen in a full run: the reference was read in the second of the last flush
    (Uptime_since_flush_status 0), so a FLUSH STATUS in that same second left Uptime -
    Uptime_since_flush_status as it was, and the fallback it zeroed looked like a clean term."""
    lab = lossless_pair(lab_factory)
    db1 = actions(lab, "db1")
    run(sql(lab, "db2"), "STOP SLAVE IO_THREAD")
    db1.set_semi_sync_primary(FALLS_BACK_AT_ONCE)
    keeper = lab_keeper(lab, tmp_path, [])
    at_the_start_of_a_second()
    run(sql(lab, "db1"), "FLUSH LOCAL STATUS")  # a monitoring tool's; LOCAL: no binlog event to count
    keeper.on_promoted()
    before = read_counters(db1)
    fall_back_and_recover(lab, "FLUSH LOCAL STATUS")
    after = read_counters(db1)
    print(f"\nreference read {before.since_flush_s} s after the flush; flush time "
          f"{before.flushed_after_s} -> {after.flushed_after_s}; counters "
          f"{before.no_times}/{before.no_tx} -> {after.no_times}/{after.no_tx}")
    assert after.no_times == after.no_tx == 0  # zeroed: the counters alone show nothing

    keeper.on_fencing()
    poll(lambda: keeper.view().evidence_problem != "evidence not read yet", 30, "the evidence")
    problem = str(keeper.view().evidence_problem)
    print(f"evidence: {problem}")
    assert "FLUSH STATUS" in problem or "fell back during the term" in problem, problem


def test_the_reference_is_read_again_once_the_second_of_a_flush_has_turned(
        lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=1)
    db1 = actions(lab, "db1")
    pid = Path(lab.node("db1").pid_file).read_text().strip()
    conn = sql(lab, "db1")

    def reference_read_in_the_second_of_a_flush() -> CounterBaseline | None:
        """A baseline whose first read saw Uptime_since_flush_status = 0 (the server's own
        second, not the client's clock: the two can straddle a second by a few ms)."""
        at_the_start_of_a_second()
        run(conn, "FLUSH LOCAL STATUS")
        sleeps: list[float] = []

        def counted_sleep(seconds: float) -> None:
            sleeps.append(seconds)
            time.sleep(seconds)
        baseline = read_baseline(db1, pid, sleep=counted_sleep)
        assert not isinstance(baseline, str), baseline
        return baseline if sleeps else None  # not read again: the second had turned already; retry
    baseline = poll(reference_read_in_the_second_of_a_flush, 30, "a reference read in a flush's second")
    assert read_counters(db1).flushed_after_s == baseline.flushed_after_s  # read again, same flush
    run(sql(lab, "db1"), "FLUSH LOCAL STATUS")  # so any later flush moves the flush time
    assert read_counters(db1).flushed_after_s != baseline.flushed_after_s


def test_sampling_taints_a_term_that_fell_back_and_a_restarted_agent_still_refuses(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    lab = lossless_pair(lab_factory)
    db1 = actions(lab, "db1")
    keeper = lab_keeper(lab, tmp_path, [])
    keeper.on_promoted()
    run(sql(lab, "db1", account="app"), "INSERT INTO app.t VALUES (3, 'acknowledged')")
    poll(lambda: keeper.term.samples >= 2, 30, "two samples of the term")
    assert keeper.term.taint == ""  # a clean term is not tainted
    run(sql(lab, "db2"), "STOP SLAVE IO_THREAD")
    db1.set_semi_sync_primary(FALLS_BACK_AT_ONCE)
    fall_back_and_recover(lab, "SELECT 1")
    poll(lambda: keeper.term.taint != "", 30, "the sampling to see the fallback")
    taint = keeper.term.taint
    assert taint.startswith("semi-sync fell back during the term (seen by the agent's sampling at "), taint
    # The taint shows in memory first (the evidence read at fencing takes it from there), and is
    # written to the state directory (fsynced, with its directory) just after.
    poll((tmp_path / "state" / TAINT_FILE).exists, 10, "the taint file")
    term = keeper.status()["term"]  # /status shows it while the node is still primary
    assert term["active"] and term["taint"] == taint and term["samples"] >= 3, term
    run(sql(lab, "db1"), "FLUSH LOCAL STATUS")  # what would hide it, were the flush time not to move

    keeper.on_fencing()
    poll(lambda: keeper.view().evidence_problem != "evidence not read yet", 30, "the evidence")
    assert keeper.view().evidence_problem == taint
    assert lab_keeper(lab, tmp_path, []).view().evidence_problem == taint  # an agent restarted while fenced


def test_a_sourceless_primary_has_semi_sync_on_and_its_counters_recorded_before_its_gate_admits(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    """The first primary, an adopted one, a withdrawn switchover: no Promote switched semi-sync
    on, and the per-round reconcile came only after the round's AdmitGate."""
    lab = lab_factory(mysql_count=1)
    db1 = actions(lab, "db1")
    db1.set_semi_sync_primary(None)  # a primary that never was a replica under this agent
    executor, _ = executor_on(lab, "db1", source_read_budget=0.5)
    executor.lossless = True
    keeper = lab_keeper(lab, tmp_path, [])
    executor.repair = keeper
    executor.gate.start()
    try:
        admit = AdmitGate(7, time.monotonic() + 30.0, ActionReason.PRIMARY_READY)
        assert executor.run(admit), executor.last_error
        assert isinstance(executor.gate.state, Admitting)
        enabled = one(sql(lab, "db1"), "SELECT @@global.rpl_semi_sync_master_enabled AS e")["e"]
        assert int(enabled) == 1
        baseline = keeper.term.baseline  # judged since mysqld started, pinned to this run
        assert keeper.term.active and baseline is not None and baseline.since_start
        assert baseline.pid == Path(lab.node("db1").pid_file).read_text().strip()
    finally:
        executor.gate.stop()
        executor.lock.close()
        keeper.on_fencing()


def client_commit(lab: LabCluster, note: str) -> tuple[threading.Thread, list[object]]:
    """A client's commit on db1 in a thread; its outcome ("OK" or the MySQL error number) once it ends."""
    outcome: list[object] = []

    def commit() -> None:
        try:
            run(sql(lab, "db1", account="app"), "INSERT INTO app.t VALUES (2, %s)", (note,))
            outcome.append("OK")
        except pymysql.MySQLError as exc:
            outcome.append(exc.args[0])
    writer = threading.Thread(target=commit, daemon=True)
    writer.start()
    return writer, outcome


@pytest.mark.parametrize("real_fallback", [False, True], ids=["own-switch-off-only", "and-a-real-fallback"])
def test_the_agents_own_switch_off_as_it_demoted_does_not_taint_a_later_sourceless_term(
        lab_factory: LabFactory, tmp_path: Path, real_fallback: bool) -> None:
    """Soak seed 404: a primary demoted (the repoint turned semi-sync off: MariaDB counts a
    fallback), then took over without a source in the same run of mysqld. Its term is judged since
    mysqld start, and its own switch-off is no client's fallback: a commit waiting for its ack at
    the fence is kept in doubt (fence by crash) for the truncation. A real fallback still taints."""
    lab = lossless_pair(lab_factory)
    db1 = actions(lab, "db1")
    keeper = lab_keeper(lab, tmp_path, [])
    keeper.on_promoted()
    keeper.on_fencing()  # db1's term ends; db2 takes over
    poll(lambda: keeper.view().evidence_problem is None, 30, "the first term's evidence")
    run(sql(lab, "db2"), "STOP SLAVE")
    run(sql(lab, "db2"), "RESET SLAVE ALL")
    executor, dcs = executor_on(lab, "db1", source_read_budget=5.0)  # its gate blocks (never started)
    executor.repair = keeper
    db2 = lab.node("db2")
    record = MemberRecord(node="db2", role="primary", healthy=True, mysql_host=db2.host, mysql_port=db2.port)
    dcs.latest = DcsView(at=time.monotonic(), snapshot=ClusterSnapshot(
        cluster="repoint-test", index=1, lock=None, members=(MemberEntry("m/db2", record, ""),)))
    try:  # the agent's own demotion: the repoint turns semi-sync's primary side off
        assert executor.run(Repoint("db2", True, ActionReason.REJOIN)), executor.last_error
    finally:
        executor.lock.close()
    assert status(lab, "db1", "Rpl_semi_sync_master_no_times") == "1"  # MariaDB counted the switch-off
    keeper.on_serving()

    # db2 is gone; db1 takes the lock without a source: no Promote, its term begins before it admits.
    run(sql(lab, "db1"), "STOP SLAVE")
    run(sql(lab, "db1"), "RESET SLAVE ALL")
    db1.set_semi_sync_primary(FALLS_BACK_AT_ONCE if real_fallback else NEVER_FALLS_BACK)
    keeper.before_admit()
    baseline = keeper.term.baseline
    assert baseline is not None and baseline.since_start
    db1.set_read_only(False)
    poll(lambda: keeper.term.samples >= 2 or keeper.term.taint, 30, "two samples of the term (or a taint)")
    assert keeper.term.taint == ""  # the agent's own switch-off is not held against the term

    if real_fallback:  # no replica: the commit's wait times out and it returns OK, acknowledged by none
        writer, outcome = client_commit(lab, "acknowledged asynchronously")
        writer.join(30)
        assert outcome == ["OK"]
        poll(lambda: keeper.term.taint != "", 30, "the sampling to see the fallback")
        assert keeper.term.taint.startswith("semi-sync fell back since mysqld start"), keeper.term.taint
        keeper.on_fencing()
        assert not keeper.fence_by_crash()  # no evidence of lossless operation: fence as usual
        poll(lambda: keeper.view().evidence_problem != "evidence not read yet", 30, "the evidence")
        assert keeper.view().evidence_problem == keeper.term.taint
        return
    writer, outcome = client_commit(lab, "never acknowledged")
    poll(lambda: status(lab, "db1", "Rpl_semi_sync_master_wait_sessions") == "1", 30, "the commit to wait")
    keeper.on_fencing()
    assert keeper.fence_by_crash()  # the evidence proves lossless operation: the commit stays in doubt
    writer.join(30)
    assert outcome and outcome[0] != "OK", outcome
    view = keeper.view()
    assert view.awaiting_restart and view.evidence_problem is None, keeper.status()

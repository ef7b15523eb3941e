"""Each probe trips on the real fault it claims to catch, against real MariaDB 10.11 from the lab.

One lab for the module; every test undoes its fault in a ``finally``. The destructive kill -9
tests run last (pytest keeps file order).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pymysql
import pytest

from dbfence.lab.cluster import LabCluster, LabSpec
from dbfence.mysql.connection import DbConnection
from dbfence.mysql.hysteresis import Health
from dbfence.mysql.monitor import HealthMonitor
from dbfence.mysql.probes import ProbeSettings, Role, probe_disk
from dbfence.mysql.verdict import ProbeKind, Reason
from tests.mysql.mysql_lab_helpers import (
    RELAXED,
    monitor,
    observe_until_healthy,
    observe_until_tripped,
    one,
    poll,
    run,
    small_tmpfs,
    sql,
    target,
)

DETECTION_BUDGET_S = 1.0


@pytest.fixture(scope="module")
def lab() -> Iterator[LabCluster]:
    # one lab for the module (the destructive tests run last); same root as tests/conftest.py
    base = Path(os.environ.get("DBFENCE_TEST_LABS", tempfile.gettempdir())) / "dbfence-tests"
    base.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="mysql-probes-", dir=base))
    cluster = LabCluster.up(LabSpec(directory=root / "lab", mysql_count=3, etcd_members=1))
    try:
        conn = sql(cluster, "db1")
        run(conn, "CREATE DATABASE IF NOT EXISTS dbtest")
        run(conn, "CREATE TABLE IF NOT EXISTS dbtest.t (id INT PRIMARY KEY, v VARCHAR(20))")
        conn.close()
        yield cluster
    finally:
        LabCluster.load(cluster.directory).down()
        shutil.rmtree(root, ignore_errors=True)


def tripped_kinds(health: Health) -> dict[ProbeKind, Reason]:
    return {t.kind: t.reason for t in health.tripped}


def test_healthy_primary_and_replica_pass_every_probe(lab: LabCluster) -> None:
    with monitor(lab, "db1", Role.PRIMARY) as primary, monitor(lab, "db2", Role.REPLICA) as replica:
        # every probe of each role passes (a probe slower than one round reports in a later one)
        p, r = observe_until_healthy(primary, 10), observe_until_healthy(replica, 10)
        assert set(p.health.tracks) == {
            ProbeKind.PROCESS,
            ProbeKind.CONNECT,
            ProbeKind.SELECT,
            ProbeKind.WRITE,
            ProbeKind.DISK,
            ProbeKind.CONNECTIONS,
            ProbeKind.READ_ONLY,
        }
        assert set(r.health.tracks) == set(p.health.tracks) - {ProbeKind.WRITE} | {ProbeKind.REPLICATION}
        for obs in (p, r):
            assert all(t.last is not None and t.last.ok for t in obs.health.tracks.values())
            assert all(v.ok for v in obs.verdicts), [str(v) for v in obs.verdicts]

        def replica_sees_heartbeat() -> bool:
            primary.observe()
            verdicts = replica.observe().verdicts
            return any(v.kind is ProbeKind.REPLICATION and "heartbeat" in v.detail for v in verdicts)

        poll(replica_sees_heartbeat, 5, "heartbeat-based lag on the replica")
    # the write probe's heartbeat replicated
    conn = sql(lab, "db2")
    poll(
        lambda: one(conn, "SELECT COUNT(*) AS n FROM dbfence.heartbeat WHERE server_id = 1")["n"] == 1,
        5,
        "the heartbeat row on db2",
    )
    conn.close()


HEARTBEAT_LIKE = ("INSERT INTO dbfence.heartbeat%",)


def test_flush_tables_with_read_lock_trips_the_write_probe_without_piling_up(lab: LabCluster) -> None:
    locker = sql(lab, "db1")
    watcher = sql(lab, "db1")

    def heartbeats_waiting() -> set[int]:
        ids = "SELECT ID AS id FROM information_schema.PROCESSLIST WHERE INFO LIKE %s"
        with watcher.cursor() as cur:
            cur.execute(ids, HEARTBEAT_LIKE)
            return {int(row["id"]) for row in cur.fetchall()}

    settings = replace(RELAXED, write_abandon_s=1.5)  # the write timeout stays the default 0.5 s
    with monitor(lab, "db1", Role.PRIMARY, settings=settings) as mon:
        observe_until_healthy(mon, 5)
        try:
            injected = time.monotonic()
            run(locker, "FLUSH TABLES WITH READ LOCK")
            obs, tripped_at = observe_until_tripped(mon, 5)
            assert tripped_kinds(obs.health) == {ProbeKind.WRITE: Reason.WRITE_TIMEOUT}
            print(f"\nFTWRL on db1: write probe tripped in {(tripped_at - injected) * 1000:.0f} ms")
            assert tripped_at - injected < 3.0  # ~1 s typical; generous for a loaded CI host
            # more rounds while stuck: never more than one heartbeat waiting on the lock, and the
            # stuck one is killed after write_abandon_s so the lane can start afresh. A fresh
            # heartbeat may queue on the lock again at once (the reconnect runs no DDL when the
            # tables exist), so the stuck one is followed by its session id, not by a count of 0.
            stuck = heartbeats_waiting()
            assert len(stuck) == 1
            saw_killed = False
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline and not saw_killed:
                mon.sleep_until_next_round()
                mon.observe()
                waiting = heartbeats_waiting()
                assert len(waiting) <= 1
                saw_killed = not (waiting & stuck)
            assert saw_killed, "the stuck heartbeat was never killed"
            assert not mon.observe().healthy
        finally:
            run(locker, "UNLOCK TABLES")
            locker.close()
        observe_until_healthy(mon, 5)
        watcher.close()


def test_one_slow_write_does_not_trip(lab: LabCluster) -> None:
    locker = sql(lab, "db1")
    with monitor(lab, "db1", Role.PRIMARY, settings=ProbeSettings()) as mon:  # defaults: N=3, 0.5 s
        observe_until_healthy(mon, 10)
        try:
            run(locker, "FLUSH TABLES WITH READ LOCK")
            while True:  # until this heartbeat is reported late once
                mon.sleep_until_next_round()
                obs = mon.observe()
                writes = [v for v in obs.verdicts if v.kind is ProbeKind.WRITE]
                if writes:
                    assert writes[0].reason is Reason.WRITE_TIMEOUT
                    break
        finally:
            run(locker, "UNLOCK TABLES")
            locker.close()
        for _ in range(8):
            mon.sleep_until_next_round()
            assert mon.observe().healthy, mon.health.describe()


@contextlib.contextmanager
def _every_slot_taken(lab: LabCluster, name: str) -> Iterator[list[DbConnection]]:
    """max_connections down to 12 and used up by the application, plus MariaDB's one extra slot
    for SUPER taken by another agent-account session: the client port refuses everyone (1040)."""
    admin = sql(lab, name)
    clients: list[DbConnection] = []
    run(admin, "SET GLOBAL max_connections = 12")
    try:
        with pytest.raises(pymysql.err.OperationalError) as refused:
            for _ in range(40):
                clients.append(sql(lab, name, account="app"))
        assert refused.value.args[0] == 1040
        with contextlib.suppress(pymysql.err.OperationalError):
            for _ in range(3):
                clients.append(sql(lab, name))
        with pytest.raises(pymysql.err.OperationalError) as refused_too:
            clients.append(sql(lab, name))
        assert refused_too.value.args[0] == 1040
        yield clients
    finally:
        for client in clients:
            client.close()
        run(admin, "SET GLOBAL max_connections = 200")
        admin.close()


def test_exhausted_max_connections_is_reported_but_never_trips(lab: LabCluster) -> None:
    # Clients that use up mysqld's slots are not a failing mysqld (docs/detection.md): the
    # probes say so (saturated) and the monitor stays healthy round after round.
    with monitor(lab, "db1", Role.PRIMARY) as mon:
        observe_until_healthy(mon, 5)
        with _every_slot_taken(lab, "db1"):
            saturated: set[ProbeKind] = set()
            for _ in range(3 * mon.health.config.trip_after):
                mon.sleep_until_next_round()
                obs = mon.observe()
                assert obs.healthy, obs.describe()
                saturated |= {t.kind for t in obs.health.saturated}
                select = [v for v in obs.verdicts if v.kind is ProbeKind.SELECT]
                assert all(v.ok for v in select)  # the reserved connection (extra_port) still works
            assert {ProbeKind.CONNECT, ProbeKind.CONNECTIONS} <= saturated
            assert "saturated" in mon.health.describe()
            assert mon.prober.max_connections == 12
        observe_until_healthy(mon, 5)
        assert not mon.health.saturated


def test_a_saturated_mysqld_that_hangs_still_trips(lab: LabCluster) -> None:
    # Saturation must not hide a real failure: SIGSTOP while every slot is taken is caught by the
    # reserved connection's SELECT timing out, as it is without the flood.
    mon = monitor(lab, "db1", Role.PRIMARY, settings=ProbeSettings())
    mon.prober.target = replace(target(lab, "db1"), pid_file=None)
    with mon, _every_slot_taken(lab, "db1"):
        for _ in range(3):
            mon.sleep_until_next_round()
            assert mon.observe().healthy, mon.health.describe()
        injected = time.monotonic()
        lab.kill_mysql("db1", signal.SIGSTOP)
        try:
            obs, tripped_at = observe_until_tripped(mon, 5)
        finally:
            lab.kill_mysql("db1", signal.SIGCONT)
        print(f"\nSIGSTOP of a saturated db1: tripped in {(tripped_at - injected) * 1000:.0f} ms: "
              f"{obs.describe()}")
        assert tripped_kinds(obs.health).keys() & {ProbeKind.SELECT, ProbeKind.WRITE}
        assert tripped_at - injected <= DETECTION_BUDGET_S


def test_conflicting_row_on_a_replica_trips_replication_with_the_error(lab: LabCluster) -> None:
    primary, replica = sql(lab, "db1"), sql(lab, "db2")
    with monitor(lab, "db2", Role.REPLICA) as mon:
        observe_until_healthy(mon, 5)
        try:
            run(replica, "SET SESSION sql_log_bin = 0")
            run(replica, "INSERT INTO dbtest.t VALUES (100, 'replica')")
            run(primary, "INSERT INTO dbtest.t VALUES (100, 'primary')")
            obs, _ = observe_until_tripped(mon, 10)
            assert tripped_kinds(obs.health) == {ProbeKind.REPLICATION: Reason.REPLICATION_ERROR}
            detail = mon.health.tracks[ProbeKind.REPLICATION].trip_verdict
            assert detail is not None and "1062" in detail.detail
        finally:
            run(replica, "DELETE FROM dbtest.t WHERE id = 100")
            run(replica, "START SLAVE")
        observe_until_healthy(mon, 10)
        assert one(replica, "SELECT v FROM dbtest.t WHERE id = 100")["v"] == "primary"
    primary.close()
    replica.close()


def test_disk_probe_trips_below_the_threshold(lab: LabCluster) -> None:
    datadir = Path(lab.node("db1").datadir)
    free = shutil.disk_usage(datadir).free
    settings = replace(RELAXED, disk_min_free_bytes=free + 2**40)  # demand a TiB more than there is
    with monitor(lab, "db1", Role.PRIMARY, settings=settings) as mon:
        obs, _ = observe_until_tripped(mon, 5)
        assert tripped_kinds(obs.health) == {ProbeKind.DISK: Reason.DISK_LOW}
        assert str(datadir) in obs.health.tracks[ProbeKind.DISK].last.detail  # type: ignore[union-attr]


def test_disk_probe_trips_on_a_nearly_full_filesystem() -> None:
    with small_tmpfs("8m") as fs:
        assert probe_disk(fs, min_free_bytes=2 * 1024**2, min_free_ratio=0.0).ok
        with (fs / "filler").open("wb") as filler:
            filler.write(b"\0" * (7 * 1024**2))
        verdict = probe_disk(fs, min_free_bytes=2 * 1024**2, min_free_ratio=0.0)
        assert not verdict.ok and verdict.reason is Reason.DISK_LOW
        assert "MiB free of 8 MiB" in verdict.detail


def _measure(
    lab: LabCluster, name: str, role: Role, fault: signal.Signals, use_pid_file: bool
) -> tuple[float, dict[ProbeKind, Reason], HealthMonitor]:
    """Inject ``fault`` into a healthy node under a default-settings monitor; time the trip.

    Returns the monitor still open (the caller closes it) so it can keep observing.
    """
    mon = monitor(lab, name, role, settings=ProbeSettings())
    if not use_pid_file:
        mon.prober.target = replace(target(lab, name), pid_file=None)
    observe_until_healthy(mon, 10)
    for _ in range(3):  # steady state: connections open, threads warm
        mon.sleep_until_next_round()
        mon.observe()
    assert mon.health.healthy, mon.health.describe()
    injected = time.monotonic()
    lab.kill_mysql(name, fault)
    try:
        obs, tripped_at = observe_until_tripped(mon, 5)
    except BaseException:
        mon.close()
        raise
    finally:
        if fault is signal.SIGSTOP:
            lab.kill_mysql(name, signal.SIGCONT)
    detection = tripped_at - injected
    print(
        f"\n{fault.name} of {name} (process probe {'on' if use_pid_file else 'off'}): "
        f"tripped in {detection * 1000:.0f} ms: {obs.describe()}"
    )
    return detection, tripped_kinds(obs.health), mon


def _verdict_reason(mon: HealthMonitor, kind: ProbeKind) -> Reason | None:
    """The failure reason of ``kind`` in the next round (None if it passed or did not report)."""
    mon.sleep_until_next_round()
    obs = mon.observe()
    return next((v.reason for v in obs.verdicts if v.kind is kind and not v.ok), None)


def test_sigstop_is_detected_within_a_second_and_recovers_after_sigcont(lab: LabCluster) -> None:
    detection, kinds, mon = _measure(lab, "db2", Role.REPLICA, signal.SIGSTOP, use_pid_file=True)
    with mon:
        assert kinds.get(ProbeKind.PROCESS) is Reason.PROCESS_STOPPED
        assert detection <= DETECTION_BUDGET_S
        observe_until_healthy(mon, 10)  # SIGCONT was sent: it recovers by itself
    # a hang that psutil cannot see (process probe off): the query timeouts catch it
    detection, kinds, mon = _measure(lab, "db2", Role.REPLICA, signal.SIGSTOP, use_pid_file=False)
    with mon:
        assert kinds.get(ProbeKind.SELECT) is Reason.QUERY_TIMEOUT
        assert detection <= DETECTION_BUDGET_S
        observe_until_healthy(mon, 10)


def test_kill_9_is_detected_within_a_second(lab: LabCluster) -> None:
    detection, kinds, mon = _measure(lab, "db3", Role.REPLICA, signal.SIGKILL, use_pid_file=False)
    with mon:
        assert detection <= DETECTION_BUDGET_S
        # the first failures may be timeouts while the kernel tears the process down; then the
        # connect probe names the cause
        assert set(kinds) <= {ProbeKind.CONNECT, ProbeKind.SELECT}
        poll(
            lambda: _verdict_reason(mon, ProbeKind.CONNECT) is Reason.CONNECT_REFUSED,
            3,
            "the connect probe to report the refused connection",
        )
    detection, kinds, mon = _measure(lab, "db1", Role.PRIMARY, signal.SIGKILL, use_pid_file=True)
    with mon:
        assert detection <= DETECTION_BUDGET_S
        assert set(kinds) <= {ProbeKind.PROCESS, ProbeKind.CONNECT, ProbeKind.SELECT, ProbeKind.WRITE}
        # the process probe names the crash too (the listener may close before the pid is gone)
        poll(
            lambda: _verdict_reason(mon, ProbeKind.PROCESS) in (Reason.PROCESS_GONE, Reason.PROCESS_ZOMBIE),
            3,
            "the process probe to report the dead mysqld",
        )


def test_probe_rounds_stay_bounded_while_mysqld_is_stopped(lab: LabCluster) -> None:
    """Runs after kill -9 of db1/db3: db2 is alive; a stopped server never makes a round hang."""
    with monitor(lab, "db2", Role.FENCED) as mon:
        observe_until_healthy(mon, 5)
        lab.kill_mysql("db2", signal.SIGSTOP)
        try:
            for _ in range(5):
                started = time.monotonic()
                mon.observe()
                assert time.monotonic() - started < mon.settings.interval_s + 0.3
            assert threading.active_count() < 40
        finally:
            lab.kill_mysql("db2", signal.SIGCONT)

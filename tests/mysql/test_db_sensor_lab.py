"""The agent's database sensor against a real mysqld, with a lock holder whose host froze."""

from __future__ import annotations

import socket
import threading
from dataclasses import replace

import pytest

from dbfence.agent.sensors import DbSensor, PeerDatabase
from dbfence.lab.cluster import LabCluster
from dbfence.lab.wait import wait_until
from dbfence.mysql.connection import query_one
from dbfence.mysql.probes import Role
from dbfence.mysql.verdict import ProbeKind
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import RELAXED, actions, creds, monitor, one, sql


def test_a_frozen_holder_does_not_look_like_a_local_mysqld_restart(lab_factory: LabFactory) -> None:
    """The errant check waits on the frozen holder's mysqld; the local uptime read before it must
    not be dated after that wait, or the node reports "restarted" once the holder changes."""
    lab = lab_factory(mysql_count=1)
    frozen = socket.create_server(("127.0.0.1", 0), backlog=8)  # accepts, never says a word
    port = frozen.getsockname()[1]
    try:
        with monitor(lab, "db1", Role.REPLICA) as probes:
            sensor = DbSensor(probes, actions(lab, "db1"), creds(lab), threading.Event())
            sensor.refresh_facts()  # local facts only
            sensor.follow(PeerDatabase("frozen", "127.0.0.1", port), lambda host, port: None)
            for _ in range(2):
                sensor.refresh_facts()  # each waits on the frozen peer's greeting
                assert sensor.latest.replication.errant is None  # unknown, not clean
            sensor.follow(None, lambda host, port: None)  # the holder changed
            sensor.refresh_facts()
            assert sensor.latest.restarts == 0
            assert sensor.latest.error == ""
    finally:
        frozen.close()


def test_receiving_follows_the_io_thread_alone(lab_factory: LabFactory) -> None:
    """The core tells "still taking the source's binlog" from "both threads run": after the IO
    thread is stopped the replica is no longer receiving, yet still applies and counts as applied."""
    lab = lab_factory(mysql_count=2)
    db2 = actions(lab, "db2")
    with monitor(lab, "db2", Role.REPLICA) as probes:
        sensor = DbSensor(probes, db2, creds(lab), threading.Event())
        sensor.refresh_facts()
        replication = sensor.latest.replication
        assert replication.receiving  # "Yes", or "Connecting" right after the lab starts
        assert db2.stop_receiving()
        sensor.refresh_facts()
        replication = sensor.latest.replication
        assert not replication.receiving and not replication.running
        assert replication.source is not None and replication.relay_log_applied
        status = sensor.latest.replica_status
        assert status is not None and status.sql_running == "Yes"


def test_a_probe_round_read_before_a_refresh_does_not_undo_it(lab_factory: LabFactory) -> None:
    """The sensor thread's round can begin reading before the loop acts and finish after the
    loop's refresh; publishing it would show the loop the state before its action (it would
    then repeat DetachSource, say). The newer read's facts stay; the round's probe verdicts
    are still taken."""
    lab = lab_factory(mysql_count=2)
    db2 = actions(lab, "db2")
    with monitor(lab, "db2", Role.REPLICA) as probes:
        sensor = DbSensor(probes, db2, creds(lab), threading.Event())
        latest = sensor.latest
        round_started_first = sensor._read_facts(latest.at, latest.health, ("round verdicts",))
        assert round_started_first.replication.receiving
        assert db2.stop_receiving()
        sensor.refresh_facts()  # the loop's re-read after its action
        sensor._install(round_started_first)  # the round finishes late
        assert not sensor.latest.replication.receiving
        assert sensor.latest.probe_summary == ("round verdicts",)


def test_a_stopped_io_thread_has_no_lag_to_report(lab_factory: LabFactory) -> None:
    """With the IO thread stopped everything received is applied, so the core's applier backlog is
    0; but how far the replica is behind its source is unknown, and status must not say 0."""
    lab = lab_factory(mysql_count=2)
    db2 = actions(lab, "db2")
    with monitor(lab, "db2", Role.REPLICA) as probes:
        sensor = DbSensor(probes, db2, creds(lab), threading.Event())

        def lag_known() -> bool:
            sensor.refresh_facts()
            return sensor.latest.replica_lag_seconds is not None

        wait_until(lag_known, timeout=20, what="db2 to report a lag while replicating")
        assert sensor.latest.replication_problem == ""
        assert db2.stop_receiving()
        sensor.refresh_facts()
        facts = sensor.latest
        assert facts.replication.lag_seconds == 0.0 and facts.replication.relay_log_applied  # the core's
        assert facts.replica_lag_seconds is None
        assert facts.replication_problem.startswith("io_thread_not_running: IO thread No from ")


def test_a_fence_that_kills_the_facts_connection_does_not_blank_the_next_read(
        lab_factory: LabFactory) -> None:
    """Fencing and repointing kill every session but the probes', including the sensor's kept
    facts connection; the loop then re-reads to see its effect. That read must not come back
    empty (no errant check, no position): a rejoined replica reported ``errant: None``."""
    lab = lab_factory(mysql_count=2)
    db2 = actions(lab, "db2")
    holder = lab.node("db1")
    with monitor(lab, "db2", Role.REPLICA) as probes:
        sensor = DbSensor(probes, db2, creds(lab), threading.Event())
        sensor.follow(PeerDatabase("db1", holder.host, holder.port), lambda host, port: None)
        sensor.refresh_facts()
        assert sensor.latest.error == "" and sensor.latest.replication.errant is not None
        killed = db2.fence(keep_ids=probes.agent_connection_ids())
        assert killed, "the fence killed no session: the sensor's connection was not open"
        sensor.refresh_facts()
        facts = sensor.latest
        assert facts.error == ""
        assert facts.position is not None and facts.replication.errant is not None
        assert facts.replication.errant.gtids == () and facts.errant_problem == ""


def test_the_errant_check_keeps_one_session_to_the_holder(lab_factory: LabFactory) -> None:
    """A replica compares its history with the holder's about once a second: over one kept
    session, not a new login each time, and a session the holder killed (its fence) is opened
    again at once instead of costing an unknown errant check."""
    lab = lab_factory(mysql_count=2)
    holder = lab.node("db1")
    db1 = actions(lab, "db1")

    def logins() -> int:
        with db1.session() as conn:
            return int(str(query_one(conn, "SHOW GLOBAL STATUS LIKE 'Connections'")["Value"]))

    with monitor(lab, "db2", Role.REPLICA) as probes:
        sensor = DbSensor(probes, actions(lab, "db2"), creds(lab), threading.Event(), errant_interval=0.0)
        sensor.follow(PeerDatabase("db1", holder.host, holder.port), lambda host, port: None)
        sensor.refresh_facts()
        assert sensor.latest.replication.errant is not None
        before = logins()
        for _ in range(5):
            sensor.refresh_facts()
            assert sensor.latest.replication.errant is not None and sensor.latest.errant_problem == ""
        # one login: the count's own; none by the five checks
        assert logins() - before == 1, "each errant check logged in to the holder again"
        db1.fence(keep_ids=frozenset())  # kills our kept session on the holder
        sensor.refresh_facts()
        assert sensor.latest.replication.errant is not None and sensor.latest.errant_problem == ""


def _replica_status_reads(lab: LabCluster, name: str) -> int:
    """How many SHOW SLAVE STATUS statements the server has answered since it started."""
    conn = sql(lab, name)
    try:
        return int(str(one(conn, "SHOW GLOBAL STATUS LIKE 'Com_show_slave_status'")["Value"]))
    finally:
        conn.close()


@pytest.mark.parametrize("probes_read_status", [False, True], ids=["agent", "probes-read-too"])
def test_a_replica_round_reads_its_replica_status_once_and_still_judges_it(
    lab_factory: LabFactory, probes_read_status: bool
) -> None:
    """The agent's probes do not read SHOW SLAVE STATUS (replica_status=False): the sensor judges
    the facts' own read, which comes after the positions. One read a round instead of two, and
    the REPLICATION line in status still follows the replica's threads."""
    lab = lab_factory(mysql_count=2)
    db2 = actions(lab, "db2")
    settings = replace(RELAXED, replica_status=probes_read_status)
    with monitor(lab, "db2", Role.REPLICA, settings) as probes:
        sensor = DbSensor(probes, db2, creds(lab), threading.Event())
        sensor._round()  # the first round opens the sessions
        before = _replica_status_reads(lab, "db2")
        rounds = 5
        for _ in range(rounds):
            sensor._round()
        reads = _replica_status_reads(lab, "db2") - before
        assert reads == rounds * (2 if probes_read_status else 1)
        assert (ProbeKind.REPLICATION in probes.prober.expected_kinds()) == probes_read_status
        [line] = [line for line in sensor.latest.probe_summary if line.startswith("replication:")]
        assert line.startswith("replication: ok"), line
        assert db2.stop_receiving()
        wait_until(lambda: "IO thread No" in _replication_line(sensor), timeout=10,
                   what="the stopped IO thread in status")


def _replication_line(sensor: DbSensor) -> str:
    sensor._round()
    return next(line for line in sensor.latest.probe_summary if line.startswith("replication:"))

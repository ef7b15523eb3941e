"""The connect and disk probes' idle cadence against a real MariaDB 10.11 (issue 18): a calm
monitor logs in once every ``idle_probe_every`` rounds instead of every round, and a client port
that refuses logins (the fault only the connect probe sees: the reserved session on extra_port
still works) is still found, and trips within ``idle_probe_every + trip_after - 1`` rounds.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import replace

from dbfence.agent.sensors import DbSensor
from dbfence.lab.cluster import LabCluster
from dbfence.lab.wait import wait_until
from dbfence.mysql.connection import Endpoint
from dbfence.mysql.monitor import HealthMonitor
from dbfence.mysql.probes import ProbeSettings, Role
from dbfence.mysql.verdict import ProbeKind, Reason
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import actions, creds, observe_until_healthy, one, sql, target

ROUNDS = 25


def _logins(lab: LabCluster) -> int:
    conn = sql(lab, "db1")
    try:
        return int(str(one(conn, "SHOW GLOBAL STATUS LIKE 'Connections'")["Value"]))
    finally:
        conn.close()


def _calm_rounds(lab: LabCluster, every: int) -> tuple[int, int, int]:
    """(connect verdicts, disk verdicts, logins mysqld counted) over ROUNDS calm rounds."""
    # generous timeouts: a loaded test host must not make a round look hesitant
    settings = ProbeSettings(connect_timeout_s=3.0, select_timeout_s=1.5, idle_probe_every=every)
    with HealthMonitor(target(lab, "db1"), settings, role=Role.PRIMARY) as mon:
        observe_until_healthy(mon, 10)
        before = _logins(lab)
        connects = disks = 0
        for _ in range(ROUNDS):
            mon.sleep_until_next_round()
            obs = mon.observe()
            assert obs.confirmed_healthy, obs.describe()
            connects += sum(v.kind is ProbeKind.CONNECT for v in obs.verdicts)
            disks += sum(v.kind is ProbeKind.DISK for v in obs.verdicts)
        return connects, disks, _logins(lab) - before - 1  # less the count's own login


def test_a_calm_monitor_logs_in_once_every_few_rounds(lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=1)
    connects, disks, logins = _calm_rounds(lab, every=5)
    # every fifth round (a round hesitating under load may add one or two)
    assert 4 <= connects <= 8 and 4 <= disks <= 8, (connects, disks)
    assert logins <= 8, logins
    # the control: every round
    connects, disks, logins = _calm_rounds(lab, every=1)
    assert connects >= ROUNDS - 1 and disks >= ROUNDS - 1, (connects, disks)
    assert logins >= ROUNDS - 1, logins


def test_a_client_port_that_refuses_logins_still_trips_and_is_then_probed_every_round(
        lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=1)
    refusing = socket.socket()  # bound, never listening: connections to it are refused
    refusing.bind(("127.0.0.1", 0))
    try:
        settings = ProbeSettings(connect_timeout_s=3.0, select_timeout_s=1.5, idle_probe_every=5)
        with HealthMonitor(target(lab, "db1"), settings, role=Role.PRIMARY) as mon:
            observe_until_healthy(mon, 10)
            for _ in range(10):  # calm: the connect probe now runs every fifth round
                mon.sleep_until_next_round()
                mon.observe()
            # the client port stops taking logins; the reserved session (extra_port) still works
            mon.prober.target = replace(mon.prober.target,
                                        endpoint=Endpoint("127.0.0.1", refusing.getsockname()[1]))
            rounds, first_failure = 0, None
            while True:
                mon.sleep_until_next_round()
                obs = mon.observe()
                rounds += 1
                connect = [v for v in obs.verdicts if v.kind is ProbeKind.CONNECT]
                if first_failure is None and connect:
                    assert connect[0].reason is Reason.CONNECT_REFUSED
                    first_failure = rounds
                elif first_failure is not None:  # from the first failure on: every round
                    assert connect and connect[0].reason is Reason.CONNECT_REFUSED, obs.verdicts
                if not obs.healthy:
                    break
                assert rounds < 5 + 3, "not tripped within idle_probe_every + trip_after - 1 rounds"
            assert first_failure is not None and first_failure <= 5
            assert rounds == first_failure + 2  # trip_after = 3 failures in a row
            assert {t.kind for t in obs.health.tripped} == {ProbeKind.CONNECT}
    finally:
        refusing.close()


def test_the_status_keeps_a_line_per_probe_while_some_run_every_few_rounds(
        lab_factory: LabFactory) -> None:
    """The database sensor's probe lines (``/status``) show the last verdict of a probe that did
    not run this round, instead of a connect line that is there one round in five."""
    lab = lab_factory(mysql_count=1)
    settings = ProbeSettings(connect_timeout_s=3.0, select_timeout_s=1.5, idle_probe_every=5)
    with HealthMonitor(target(lab, "db1"), settings) as mon:
        sensor = DbSensor(mon, actions(lab, "db1"), creds(lab), threading.Event())
        sensor.want_role(Role.PRIMARY)

        def settled() -> bool:
            mon.sleep_until_next_round()
            sensor._round()
            return mon._calm

        wait_until(settled, timeout=10, what="a calm round")
        before = _logins(lab)
        for _ in range(10):
            mon.sleep_until_next_round()
            sensor._round()
            lines = sensor.latest.probe_summary
            assert any(line.startswith("connect: ok") for line in lines), lines
            assert any(line.startswith("disk: ok") for line in lines), lines
            assert len(lines) == len({line.split(":")[0] for line in lines})  # one line per probe
        assert _logins(lab) - before - 1 <= 4  # meanwhile the connect probe skipped most rounds

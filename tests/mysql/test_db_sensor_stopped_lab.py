"""The database sensor's detection of a SIGSTOPped mysqld, against a real one (soak seed 401:
the primary's fence came 6.3 s after the SIGSTOP; docs/detection.md promises about 0.6 s)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from dbfence.agent.sensors import DbSensor
from dbfence.mysql.hysteresis import HysteresisConfig
from dbfence.mysql.probes import ProbeSettings, Role
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import actions, creds, monitor


def test_a_stopped_mysqld_trips_within_the_documented_time(lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=1)
    node = lab.node("db1")
    settings = ProbeSettings()
    with monitor(lab, "db1", Role.PRIMARY, settings, HysteresisConfig()) as probes:
        sensor = DbSensor(probes, actions(lab, "db1"), creds(lab), threading.Event())
        sensor.start()
        try:
            deadline = time.monotonic() + 60
            while (sensor.latest.health.tripped or sensor.latest.health.unconfirmed
                   or sensor.latest.read_only is None):
                assert time.monotonic() < deadline, sensor.latest
                time.sleep(0.05)
            pid = int(Path(node.pid_file).read_text().strip())
            os.kill(pid, signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                while not sensor.latest.health.tripped:
                    assert time.monotonic() < stopped + 30, sensor.latest
                    time.sleep(0.02)
                took = time.monotonic() - stopped
            finally:
                os.kill(pid, signal.SIGCONT)
            print(f"\nSIGSTOP tripped after {took:.2f} s: {sensor.latest.health}")
            assert took < 2.0, (took, sensor.latest.health)
        finally:
            sensor.stop()

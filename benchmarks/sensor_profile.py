"""Where the database sensor's own thread spends its CPU in one round (issue 18, the agent's idle
cost): cProfile of the sensor thread, and CPU per round of that thread.

Not a test. Starts a 2-node lab (no agents), builds the agent's database sensor for the replica
db2 with the agent's probe settings at production defaults (probes every 0.2 s), and runs its
rounds back to back on this thread. The probe lanes' threads are not in the profile (they are
the "reserved" and "connect" lanes of `footprint.py --threads`); the sensor thread's own work is.

    PYTHONPATH=. python benchmarks/sensor_profile.py --rounds 500
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import tempfile
import threading
import time
from pathlib import Path

from dbfence.agent.sensors import DbSensor
from dbfence.lab.cluster import LabCluster, LabSpec
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.connection import Endpoint
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.monitor import HealthMonitor
from dbfence.mysql.probes import ProbeSettings, Role, Target


def sensor_for(lab: LabCluster, name: str, settings: ProbeSettings) -> DbSensor:
    node = lab.node(name)
    account = lab.accounts["agent"]
    credentials = Credentials(account.user, account.password)
    endpoint = Endpoint(node.host, node.port)
    target = Target(endpoint=endpoint, credentials=credentials, pid_file=Path(node.pid_file),
                    datadir=Path(node.datadir), reserved_endpoint=Endpoint(node.host, node.extra_port))
    monitor = HealthMonitor(target, settings, role=Role.REPLICA)
    return DbSensor(monitor, MysqlActions(endpoint, credentials, name=name), credentials, threading.Event())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--top", type=int, default=25, help="functions shown, by own time")
    parser.add_argument("--probes-read-status", action="store_true",
                        help="the probes also read SHOW SLAVE STATUS (before this session's change)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sensor-profile-"))
    lab = LabCluster.up(LabSpec(directory=root / "lab", mysql_count=2, etcd_members=1))
    try:
        # The agent's settings (daemon_config.monitor_of) at production defaults.
        settings = ProbeSettings(max_replica_lag_s=30.0, replica_status=args.probes_read_status)
        sensor = sensor_for(lab, "db2", settings)
        for _ in range(20):  # sessions open, datadir read, hysteresis settled
            sensor._round()
        started, cpu = time.monotonic(), time.thread_time()
        for _ in range(args.rounds):  # unprofiled: the CPU figure
            sensor._round()
        cpu_per_round = (time.thread_time() - cpu) / args.rounds
        wall_per_round = (time.monotonic() - started) / args.rounds
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.rounds):  # profiled: where it goes
            sensor._round()
        profile.disable()
        sensor._monitor.close()
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.top)
        print(out.getvalue())
        per_second = 1 / settings.interval_s
        print(f"sensor thread: {cpu_per_round * 1000:.3f} ms CPU per round "
              f"(wall {wall_per_round * 1000:.2f} ms) "
              f"= {cpu_per_round * per_second * 100:.2f} % of a core at {per_second:g} rounds/s "
              "(measured without the profiler)")
    finally:
        LabCluster.load(lab.directory).down()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

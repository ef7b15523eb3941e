"""What one sample of a primary's semi-sync counters costs (dbfence.agent.term_watch, every 2 s).

A sample is what the sampler thread does: connect to the local mysqld, one ``SHOW GLOBAL STATUS
WHERE Variable_name IN (...)`` of four variables, disconnect. Measured against a one-node lab
(real MariaDB), several runs of many samples each; prints the median and the 95th percentile of
each run and the machine's load.

    PYTHONPATH=. .venv/bin/python benchmarks/semi_sync_sample.py [--samples 300] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from dbfence.lab.cluster import LabCluster, LabSpec
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.connection import Endpoint
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.semi_sync_term import read_counters


def sample_times(mysql: MysqlActions, samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        read_counters(mysql)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="bench-sample-"))
    lab = LabCluster.up(LabSpec(directory=directory / "lab", mysql_count=1))
    try:
        node, account = lab.node("db1"), lab.accounts["agent"]
        mysql = MysqlActions(Endpoint(node.host, node.port), Credentials(account.user, account.password),
                             name="db1")
        sample_times(mysql, 20)  # warm up
        print(f"load average before: {os.getloadavg()}")
        medians = []
        for run in range(args.runs):
            times = sorted(sample_times(mysql, args.samples))
            median, p95 = statistics.median(times), times[int(len(times) * 0.95)]
            medians.append(median)
            print(f"run {run + 1}: median {median * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms "
                  f"({args.samples} samples)")
        print(f"median of the runs' medians: {statistics.median(medians) * 1000:.2f} ms; "
              f"load average after: {os.getloadavg()}")
    finally:
        lab.down()


if __name__ == "__main__":
    main()

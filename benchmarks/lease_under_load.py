"""Does the primary keep its lease while its host is saturated? The worst gap between renewals.

Not a test. Starts a 2-node lab in network namespaces with agents (lab tuning: TTL 3 s, margin
1 s; or production defaults: TTL 10 s, margin 2 s), runs sysbench with many threads from the
client namespace through the primary's gate for a while, then reads the primary's agent
``/status``: the longest time between two successful renewals since it started
(``lease.worst_renew_gap``), the least lease that was left when one landed
(``lease.least_lease_left``), and whether the primary changed. Also counts the agent's
"lease renewal late" warnings. Prints a table and one JSON line.

    PYTHONPATH=. python benchmarks/lease_under_load.py --threads 64 --seconds 300 --tuning lab
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.gate import Endpoint, sysbench_args
from dbfence.lab.agents import AgentTuning, http_status
from dbfence.lab.cluster import LabCluster, LabSpec

TUNINGS = {"lab": AgentTuning(), "production": AgentTuning(ttl=10.0, margin=2.0, interval=0.2)}


def _status(lab: LabCluster, name: str) -> dict[str, Any]:
    code, body = lab.in_client(http_status, lab.agent(name))
    if code != 200:
        raise RuntimeError(f"{name}'s /status answered {code}")
    status: dict[str, Any] = json.loads(body)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--tuning", choices=sorted(TUNINGS), default="lab")
    parser.add_argument("--workload", default="oltp_point_select")
    options = parser.parse_args(argv)
    tuning = TUNINGS[options.tuning]
    directory = Path(tempfile.mkdtemp(prefix="dbfence-lease-load-"))
    lab = LabCluster.up(LabSpec(directory=directory / "lab", mysql_count=2, etcd_members=1, agents=True,
                                netns=True, agent_tuning=tuning))
    try:
        primary = lab.wait_settled()
        agent, app = lab.agent(primary), lab.accounts["app"]
        with lab.in_client(lab.connect, primary, "agent") as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE IF NOT EXISTS sbtest")
        prefix = lab.argv_prefix("client")
        direct = Endpoint("direct", lab.node(primary).host, lab.node(primary).port)
        prepare = [*prefix, *sysbench_args("oltp_read_write", direct, app.user, app.password, 4)]
        subprocess.run([*prepare, "--threads=4", "prepare"], capture_output=True, check=True, timeout=300)
        before = _status(lab, primary)["lease"]
        gate = Endpoint("gate", agent.address, agent.gate_port)
        run = [*prefix, *sysbench_args(options.workload, gate, app.user, app.password, 4),
               f"--threads={options.threads}", f"--time={options.seconds}", "--mysql-ignore-errors=all",
               "run"]
        started = time.monotonic()
        done = subprocess.run(run, capture_output=True, text=True, timeout=options.seconds + 120, check=False)
        elapsed = time.monotonic() - started
        load = os.getloadavg()  # the whole machine's, at the end of the run (others share it)
        primaries = lab.primaries()
        after = _status(lab, primary)
        late = sum(1 for line in Path(agent.log).read_text(errors="replace").splitlines()
                   if "lease renewal late" in line)
    finally:
        lab.down()
    totals = [line.split()[1] for line in done.stdout.splitlines() if line.strip().startswith("queries:")]
    queries = totals[0] if totals else "?"
    result = {
        "tuning": options.tuning, "ttl": tuning.ttl, "margin": tuning.margin, "threads": options.threads,
        "seconds": round(elapsed, 1), "queries": queries, "primary_before": primary,
        "primaries_after": primaries, "role_after": after["role"],
        "worst_renew_gap_before_load": before.get("worst_renew_gap"),
        "worst_renew_gap": after["lease"].get("worst_renew_gap"),
        "least_lease_left": after["lease"].get("least_lease_left"),
        "late_renewal_warnings": late,
        "load_average_1_5_15": [round(value, 1) for value in load],
    }
    for key, value in result.items():
        print(f"{key:28s} {value}")
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

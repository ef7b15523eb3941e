"""How long the primary's decision rounds take while the DCS is down (docs/failsafe.md).

A lab of 3 MariaDB, 3 etcd and 3 agents with failsafe on. The primary's rounds are read from its
``dbfence_decision_round_seconds`` summary (count, sum, max) over a window with the DCS up, then
over a window with etcd's quorum lost (two of three members killed), then etcd comes back. A
round that waits for a DCS call on the loop shows as a mean near the call timeout; the failsafe
must not depend on it (the promise rounds and the lease keeper run on their own threads).

    .venv/bin/python benchmarks/loop_outage.py --seconds 15

It prints the two windows and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import LabCluster
from dbfence.lab.etcd_servers import EtcdMember
from dbfence.lab.fault_labs import start_lab
from dbfence.lab.faults_dcs import etcd_leader
from dbfence.lab.wait import wait_until

NAME = "dbfence_decision_round_seconds"


def _scrape(lab: LabCluster, node: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{lab.agent(node).http_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for suffix in ("_count", "_sum"):
        match = re.search(rf"^{NAME}{suffix} (\S+)$", text, re.MULTILINE)
        values[suffix] = float(match.group(1)) if match else 0.0
    admitting = re.search(r"^dbfence_gate_admitting (\S+)$", text, re.MULTILINE)
    values["admitting"] = float(admitting.group(1)) if admitting else 0.0
    return values


def _exited(member: EtcdMember) -> bool | None:
    return not member.process.alive() or None


def _window(lab: LabCluster, node: str, seconds: float) -> dict[str, Any]:
    """Rounds in the next ``seconds``: count, mean, and the longest seen between two scrapes."""
    first = previous = _scrape(lab, node)
    longest = 0.0
    admitting_throughout = True
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        time.sleep(0.25)
        current = _scrape(lab, node)
        rounds = current["_count"] - previous["_count"]
        if rounds == 1:  # exactly one round between two scrapes: its own duration
            longest = max(longest, current["_sum"] - previous["_sum"])
        elif rounds > 1:  # at least the mean of those
            longest = max(longest, (current["_sum"] - previous["_sum"]) / rounds)
        admitting_throughout &= current["admitting"] == 1.0
        previous = current
    rounds = previous["_count"] - first["_count"]
    spent = previous["_sum"] - first["_sum"]
    return {"rounds": int(rounds), "rounds_per_s": round(rounds / seconds, 1),
            "mean_ms": round(1000 * spent / rounds, 1) if rounds else None,
            "longest_ms_seen": round(1000 * longest, 1), "busy_fraction": round(spent / seconds, 3),
            "gate_admitting_throughout": admitting_throughout}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each window")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loop-outage-") as directory:
        fault_lab = start_lab(Path(directory) / "lab", "etcd", AgentTuning(failsafe=True))
        lab = fault_lab.lab
        try:
            primary = wait_until(lambda: next(iter(lab.primaries()), None), timeout=60, what="a primary")
            wait_until(lambda: _scrape(lab, primary)["_count"] > 0 or None, timeout=30,
                       what="the primary's first rounds in its metrics")
            up = _window(lab, primary, args.seconds)
            leader = etcd_leader(lab)
            killed = [leader, next(m for m in lab.etcd if m.name != leader.name)]
            for member in killed:
                lab.kill_etcd(member.name)
            try:
                time.sleep(2.0)  # renewals start failing as unreachable
                down = _window(lab, primary, args.seconds)
            finally:
                for member in killed:
                    wait_until(partial(_exited, member), timeout=10, what=f"{member.name} to exit")
                    lab.start_etcd(member.name)
        finally:
            fault_lab.down()
    for label, window in (("DCS up", up), ("etcd quorum lost", down)):
        print(f"{label:>17}: {window['rounds']} rounds ({window['rounds_per_s']}/s), mean "
              f"{window['mean_ms']} ms, longest seen {window['longest_ms_seen']} ms, loop busy "
              f"{100 * window['busy_fraction']:.1f} %, gate admitting throughout: "
              f"{window['gate_admitting_throughout']}")
    print(json.dumps({"benchmark": "loop_outage", "seconds": args.seconds, "dcs_up": up,
                      "quorum_lost": down}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

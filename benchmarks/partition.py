"""Partition the primary's host N times (a fresh namespaced lab each time) and report the figures.

    sudo PYTHONPATH=. python benchmarks/partition.py --runs 5
    sudo PYTHONPATH=. python benchmarks/partition.py --runs 5 --fault partition-lagging-replica

Needs root (network namespaces). Each run's outcome is printed as one JSON line, then the summary:
time from the partition to the new holder's lock and to the first write it acknowledged
(median, max), and writes refused, of unknown outcome, lost and overlapping (totals).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from dbfence.lab import netns
from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import LabCluster, LabSpec
from dbfence.lab.partition import FAULT_NAMES, PartitionOutcome, run_partition


def one_run(root: Path, index: int, fault: str, tuning: AgentTuning, keep: bool) -> PartitionOutcome:
    directory = root / f"run{index}"
    lab = LabCluster.up(LabSpec(directory=directory, mysql_count=3, agents=True, netns=True,
                                agent_tuning=tuning))
    try:
        return run_partition(lab, fault=fault)
    finally:
        LabCluster.load(directory).down()
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)  # three MariaDB data directories per run


def summarize(outcomes: list[PartitionOutcome]) -> dict[str, object]:
    def spread(values: list[float | None]) -> dict[str, float | None]:
        present = [v for v in values if v is not None]
        return {"median": round(statistics.median(present), 2) if present else None,
                "max": round(max(present), 2) if present else None,
                "missing": len(values) - len(present)}
    return {
        "runs": len(outcomes),
        "lock_taken_after_s": spread([o.lock_taken_after for o in outcomes]),
        "first_new_ack_after_s": spread([o.first_new_ack_after for o in outcomes]),
        "acknowledged": sum(o.acknowledged for o in outcomes),
        "refused": sum(o.refused for o in outcomes),
        "unknown": sum(o.unknown for o in outcomes),
        "lost": sum(len(o.lost) for o in outcomes),
        "overlapping": sum(o.overlapping for o in outcomes),
        "after_heal": sorted(o.after_heal.split(" 0-")[0] for o in outcomes),
        "load_average": [round(x, 1) for x in os.getloadavg()],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fault", choices=FAULT_NAMES, default="partition")
    parser.add_argument("--ttl", type=float, default=3.0)
    parser.add_argument("--margin", type=float, default=1.0)
    parser.add_argument("--keep", action="store_true", help="keep each run's lab directory and logs")
    args = parser.parse_args()
    if (reason := netns.unavailable_reason()) is not None:
        print(f"partition benchmark skipped: {reason}", file=sys.stderr)
        return 2
    tuning = AgentTuning(ttl=args.ttl, margin=args.margin)
    root = Path(tempfile.mkdtemp(prefix="dbfence-partition-"))
    outcomes = []
    try:
        for index in range(1, args.runs + 1):
            outcome = one_run(root, index, args.fault, tuning, args.keep)
            outcomes.append(outcome)
            print(json.dumps(outcome.to_json()), flush=True)
    finally:
        if args.keep:
            print(f"lab directories kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(summarize(outcomes), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

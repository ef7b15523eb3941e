"""The agent's idle footprint: PSS, RSS and CPU per agent (with its gate workers), idle cluster.

Not a test. Starts a 3-node lab with agents (etcd, loopback), once at production defaults
(TTL 10 s, margin 2 s, probes every 0.2 s) and once at the lab's tuning (TTL 3 s, margin 1 s,
probes every 0.1 s); waits until a primary admits and the cluster has settled; then samples each
agent and its children (the gate workers) over a quiet window: PSS and RSS (psutil, from
/proc/PID/smaps_rollup; PSS shares the pages the agent and its workers have in common fairly), and
CPU time (user + system) per second of wall time. Prints a table and one JSON line.

    PYTHONPATH=. python benchmarks/footprint.py --window 30 --repeats 3

On a shared host the CPU figures carry other processes' interference (cache, frequency); the
medians of several windows are reported.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import LabCluster, LabSpec

TUNINGS = {
    "production": AgentTuning(ttl=10.0, margin=2.0, interval=0.2, trip_after=3),
    "lab": AgentTuning(),
}


@dataclass(frozen=True)
class Usage:
    pss_mb: float
    rss_mb: float
    cpu_percent: float  # of one core


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _memory(processes: list[psutil.Process]) -> tuple[float, float]:
    pss = rss = 0.0
    for process in processes:
        info = process.memory_full_info()
        pss += info.pss
        rss += info.rss
    return pss / 2**20, rss / 2**20


def _cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def sample(pids: dict[str, int], window: float) -> dict[str, Usage]:
    trees = {name: _tree(pid) for name, pid in pids.items()}
    before = {name: _cpu(tree) for name, tree in trees.items()}
    started = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - started
    usage = {}
    for name, tree in trees.items():
        pss, rss = _memory(tree)
        cpu_percent = (_cpu(tree) - before[name]) / elapsed * 100
        usage[name] = Usage(round(pss, 1), round(rss, 1), round(cpu_percent, 2))
    return usage


def measure(tuning_name: str, window: float, repeats: int, settle: float) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="dbfence-footprint-"))
    lab = LabCluster.up(LabSpec(directory=directory / "lab", mysql_count=3, etcd_members=1, agents=True,
                                agent_tuning=TUNINGS[tuning_name]))
    try:
        deadline = time.monotonic() + 60
        while not lab.primaries():
            if time.monotonic() > deadline:
                raise RuntimeError("no primary after 60 s")
            time.sleep(0.2)
        time.sleep(settle)  # the replicas' first rounds, the warm-up of every cache
        pids = {agent.name: agent.pid for agent in lab.agents}
        windows = [sample(pids, window) for _ in range(repeats)]
        primary = lab.primaries()[0]
    finally:
        lab.down()
        shutil.rmtree(directory, ignore_errors=True)  # ~275 MB of MariaDB data per lab
    result: dict[str, Any] = {"primary": primary, "agents": {}}
    for name in pids:
        rows = [w[name] for w in windows]
        result["agents"][name] = {
            "pss_mb": statistics.median(r.pss_mb for r in rows),
            "rss_mb": statistics.median(r.rss_mb for r in rows),
            "cpu_percent": statistics.median(r.cpu_percent for r in rows),
            "cpu_percent_windows": [r.cpu_percent for r in rows],
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=20.0, help="seconds per CPU sample")
    parser.add_argument("--repeats", type=int, default=3, help="windows per tuning (medians reported)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after a primary admits")
    parser.add_argument("--tunings", default="production,lab")
    options = parser.parse_args(argv)
    summary: dict[str, Any] = {"window_s": options.window, "repeats": options.repeats,
                               "load_average": list(psutil.getloadavg()), "tunings": {}}
    print(f"{'tuning':11s} {'agent':6s} {'role':8s} {'PSS MB':>7s} {'RSS MB':>7s} {'CPU %':>6s}  windows")
    for tuning in options.tunings.split(","):
        result = measure(tuning, options.window, options.repeats, options.settle)
        summary["tunings"][tuning] = result
        for name, row in result["agents"].items():
            role = "primary" if name == result["primary"] else "replica"
            print(f"{tuning:11s} {name:6s} {role:8s} {row['pss_mb']:7.1f} {row['rss_mb']:7.1f} "
                  f"{row['cpu_percent']:6.2f}  {row['cpu_percent_windows']}", flush=True)
    summary["load_average_after"] = list(psutil.getloadavg())
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The agent's idle footprint: PSS, RSS and CPU per agent (with its gate workers), idle cluster.

Not a test. Starts a 3-node lab with agents (etcd, loopback), once at production defaults
(TTL 10 s, margin 2 s, probes every 0.2 s) and once at the lab's tuning (TTL 3 s, margin 1 s,
probes every 0.1 s); waits until a primary admits and the cluster has settled; then samples each
agent and its children (the gate workers) over a quiet window: PSS and RSS (psutil, from
/proc/PID/smaps_rollup; PSS shares the pages the agent and its workers have in common fairly), and
CPU time (user + system) per second of wall time. Prints a table and one JSON line.

    PYTHONPATH=. python benchmarks/footprint.py --window 30 --repeats 3

``--dcs consul`` runs the lab on the Consul stand-in instead of etcd; ``--no-page-out`` turns
``node.page_out_libraries`` off (the same build with and without, back to back);
``--failover`` samples again after a ``kill -9`` of the primary's mysqld, once the cluster has a
new primary and the old one has rejoined.

Besides PSS, each agent's **alone** figure: its frames (agent and workers) counted once each, read
from ``/proc/PID/pagemap`` (root only; else 0): what the agent would cost on a host of its own, where
nothing else maps gRPC's library. In the lab three agents share those pages, so their PSS divides
them by three.

``--threads`` adds the profile: CPU per thread of each agent over the windows (named by its Python
thread name when ``py-spy`` is on PATH or next to the interpreter, else by thread id), and the PSS
of the agent process alone and of each worker.

On a shared host the CPU figures carry other processes' interference (cache, frequency); the
medians of several windows are reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

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
    alone_mb: float = 0.0  # frames of the agent and its workers, each once
    process_pss_mb: tuple[float, ...] = ()  # the agent's, then each worker's
    thread_cpu: tuple[tuple[str, float], ...] = ()  # (thread, % of one core), busiest first


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _thread_ticks(pid: int) -> dict[int, int]:
    ticks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        ticks[int(tid)] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _thread_names(pid: int) -> dict[int, str]:
    tool = _py_spy()
    if tool is None:
        return {}
    command = [tool, "dump", "--nonblocking", "--pid", str(pid)]
    dump = subprocess.run(command, check=False, capture_output=True, text=True, timeout=30).stdout
    return {int(m.group(1)): m.group(2) for m in re.finditer(r'Thread (\d+) \(\w+\): "([^"]*)"', dump)}


def _name(tid: int, names: dict[int, str]) -> str:
    if tid in names:
        # Executor threads carry a counter (dbfence-probe-disk_0): one name per role.
        return re.sub(r"_\d+$", "", re.sub(r"^Thread-\d+", "Thread", names[tid]))
    return "other (threads of C libraries, short-lived threads)"


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


_PFN_MASK = (1 << 55) - 1
_PRESENT = 1 << 63


def _frames(pid: int) -> set[int]:
    """The page frames a process has mapped (root: the kernel hides frame numbers from others)."""
    frames: set[int] = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            low, high = (int(x, 16) for x in line.split()[0].split("-"))
            if line.rstrip().endswith("[vsyscall]"):
                continue
            pagemap.seek(low // 4096 * 8)
            data = pagemap.read((high - low) // 4096 * 8)
            for (entry,) in struct.iter_unpack("<Q", data):
                if entry & _PRESENT and entry & _PFN_MASK:
                    frames.add(entry & _PFN_MASK)
    return frames


def _alone(processes: list[psutil.Process]) -> float:
    frames: set[int] = set()
    for process in processes:
        try:
            frames |= _frames(process.pid)
        except OSError:
            return 0.0
    return len(frames) * 4096 / 2**20


def _cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def _per_thread(before: dict[int, int], after: dict[int, int], names: dict[int, str], elapsed: float,
                agent_percent: float, workers_percent: float) -> tuple[tuple[str, float], ...]:
    by_name: dict[str, float] = {}
    for tid, ticks in after.items():
        name = _name(tid, names)
        by_name[name] = by_name.get(name, 0.0) + (ticks - before.get(tid, 0)) / _CLOCK_TICKS / elapsed * 100
    # Threads that ended inside the window are only in the process total.
    accounted = sum(by_name.values())
    by_name["not attributed to a live thread (ended threads)"] = max(0.0, agent_percent - accounted)
    by_name["gate workers (processes)"] = workers_percent
    return tuple(sorted(((n, round(p, 2)) for n, p in by_name.items() if p > 0), key=lambda r: -r[1]))


def sample(pids: dict[str, int], window: float, threads: bool = False) -> dict[str, Usage]:
    trees = {name: _tree(pid) for name, pid in pids.items()}
    names = {name: _thread_names(pid) for name, pid in pids.items()} if threads else {}
    thread_before = {name: _thread_ticks(pid) for name, pid in pids.items()} if threads else {}
    before = {name: _cpu(tree) for name, tree in trees.items()}
    agent_before = {name: _cpu(tree[:1]) for name, tree in trees.items()}
    started = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - started
    usage = {}
    for name, tree in trees.items():
        pss, rss = _memory(tree)
        cpu_percent = (_cpu(tree) - before[name]) / elapsed * 100
        per_thread: tuple[tuple[str, float], ...] = ()
        per_process: tuple[float, ...] = ()
        if threads:
            agent_percent = (_cpu(tree[:1]) - agent_before[name]) / elapsed * 100
            per_thread = _per_thread(thread_before[name], _thread_ticks(pids[name]), names[name],
                                     elapsed, agent_percent, cpu_percent - agent_percent)
            per_process = tuple(round(_memory([p])[0], 1) for p in tree)
        usage[name] = Usage(round(pss, 1), round(rss, 1), round(cpu_percent, 2), round(_alone(tree), 1),
                            per_process, per_thread)
    return usage


def _wait(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} after {timeout:.0f} s")
        time.sleep(0.2)


def _fail_over(lab: LabCluster) -> None:
    """kill -9 the primary's mysqld; wait for a new primary and for the old one to rejoin."""
    old = lab.primaries()[0]
    lab.kill_mysql(old)
    _wait("new primary", lambda: lab.primaries() not in ([], [old]), 120)
    _wait("dead mysqld", lambda: not lab.node(old).process.alive(), 10)
    lab.start_mysql(old)
    _wait(f"rejoin of {old}", lambda: lab.agent_status(old).get("role") == "replica", 120)


def measure(tuning_name: str, window: float, repeats: int, settle: float, threads: bool = False,
            *, dcs: str = "etcd", page_out: bool = True, failover: bool = False) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="dbfence-footprint-"))
    tuning = dataclasses.replace(TUNINGS[tuning_name], page_out_libraries=page_out)
    try:
        lab = LabCluster.up(LabSpec(directory=directory / "lab", mysql_count=3, dcs=cast(Any, dcs),
                                    etcd_members=1, agents=True, agent_tuning=tuning))
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)  # a lab that failed to start stops its own servers
        raise
    try:
        deadline = time.monotonic() + 60
        while not lab.primaries():
            if time.monotonic() > deadline:
                raise RuntimeError("no primary after 60 s")
            time.sleep(0.2)
        time.sleep(settle)  # the replicas' first rounds, the warm-up of every cache
        pids = {agent.name: agent.pid for agent in lab.agents}
        windows = [sample(pids, window, threads) for _ in range(repeats)]
        primary = lab.primaries()[0]
        after: list[dict[str, Usage]] = []
        if failover:
            _fail_over(lab)
            time.sleep(settle)
            after = [sample(pids, window, threads) for _ in range(repeats)]
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
            "alone_mb": statistics.median(r.alone_mb for r in rows),
        }
        if after:
            rows_after = [w[name] for w in after]
            result["agents"][name]["after_failover"] = {
                "pss_mb": statistics.median(r.pss_mb for r in rows_after),
                "alone_mb": statistics.median(r.alone_mb for r in rows_after),
                "cpu_percent": statistics.median(r.cpu_percent for r in rows_after),
            }
        if threads:
            result["agents"][name]["process_pss_mb"] = list(rows[-1].process_pss_mb)
            result["agents"][name]["thread_cpu_percent"] = _median_threads(rows)
    return result


def _median_threads(rows: list[Usage]) -> dict[str, float]:
    names = {name for row in rows for name, _ in row.thread_cpu}
    medians = {name: statistics.median(dict(row.thread_cpu).get(name, 0.0) for row in rows) for name in names}
    return dict(sorted(medians.items(), key=lambda item: -item[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=20.0, help="seconds per CPU sample")
    parser.add_argument("--repeats", type=int, default=3, help="windows per tuning (medians reported)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after a primary admits")
    parser.add_argument("--tunings", default="production,lab")
    parser.add_argument("--threads", action="store_true", help="CPU per thread, PSS per process")
    parser.add_argument("--dcs", choices=("etcd", "consul"), default="etcd")
    parser.add_argument("--no-page-out", action="store_true", help="node.page_out_libraries = false")
    parser.add_argument("--failover", action="store_true", help="sample again after a mysqld kill -9")
    options = parser.parse_args(argv)
    summary: dict[str, Any] = {"window_s": options.window, "repeats": options.repeats, "dcs": options.dcs,
                               "page_out": not options.no_page_out,
                               "load_average": list(psutil.getloadavg()), "tunings": {}}
    print(f"{'tuning':11s} {'agent':6s} {'role':8s} {'PSS MB':>7s} {'RSS MB':>7s} {'alone':>6s} {'CPU %':>6s}"
          "  windows")
    for tuning in options.tunings.split(","):
        result = measure(tuning, options.window, options.repeats, options.settle, options.threads,
                         dcs=options.dcs, page_out=not options.no_page_out, failover=options.failover)
        summary["tunings"][tuning] = result
        for name, row in result["agents"].items():
            role = "primary" if name == result["primary"] else "replica"
            print(f"{tuning:11s} {name:6s} {role:8s} {row['pss_mb']:7.1f} {row['rss_mb']:7.1f} "
                  f"{row['alone_mb']:6.1f} {row['cpu_percent']:6.2f}  {row['cpu_percent_windows']}",
                  flush=True)
            if "after_failover" in row:
                print(f"    after a failover: {row['after_failover']}")
            if options.threads:
                print(f"    PSS MB per process (agent, workers): {row['process_pss_mb']}")
                for thread, percent in row["thread_cpu_percent"].items():
                    print(f"    {percent:5.2f} %  {thread}")
    summary["load_average_after"] = list(psutil.getloadavg())
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Measure what the gate costs per query with a fixed number of queries (not a throughput race).

On a shared, noisy host QPS moves by ±30 % between identical runs; the CPU time the gate's workers
spend for a fixed number of queries moves much less. This runs ``sysbench oltp_point_select
--events=N`` through each gate variant in interleaved rounds and prints the workers' user + system
CPU time per query (µs, medians), and the wall time per query for reference. Example::

    PYTHONPATH=. python benchmarks/gate_cost.py --lab DIR --targets gate-w1,gate-w2 --rounds 5

Variants are named as in ``benchmarks/gate.py``: ``gate-w1``, ``gate-w2-tcp``, ...
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.gate import Endpoint, Renewer, cpu_seconds, gate_variant, host_busy_seconds, sysbench_args
from dbfence.breaker.config import GateConfig
from dbfence.breaker.gate import Gate
from dbfence.lab.cluster import LabCluster, LabSpec


def run_fixed(args: list[str], threads: int, events: int) -> float:
    """Run exactly ``events`` sysbench events; return the wall time in seconds."""
    command = [*args, f"--threads={threads}", f"--events={events}", "--time=0", "run"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"sysbench failed ({done.returncode}): {done.stdout[-800:]} {done.stderr[-800:]}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lab", type=Path, help="attach to a running lab instead of starting one")
    parser.add_argument("--targets", default="gate-w1,gate-w2")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args(argv)

    tempdir = Path(tempfile.mkdtemp(prefix="dbfence-cost-"))
    lab = LabCluster.load(options.lab) if options.lab else LabCluster.up(
        LabSpec(directory=tempdir / "lab", mysql_count=1, etcd_members=1)
    )
    node = lab.mysql[0]
    agent = lab.accounts["agent"]
    gates: dict[str, Gate] = {}
    cpu_us: dict[str, list[float]] = {}
    wall_us: dict[str, list[float]] = {}
    host_us: dict[str, list[float]] = {}
    try:
        direct = Endpoint("direct", node.host, node.port)
        prepare = sysbench_args("oltp_point_select", direct, agent.user, agent.password, 4)
        with lab.connect(node.name) as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE IF NOT EXISTS sbtest")
            cur.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'sbtest'")
            row = cur.fetchone()
        if row is None or int(row[0]) < 4:
            subprocess.run([*prepare, "--threads=4", "prepare"], capture_output=True, check=True, timeout=300)
        targets = options.targets.split(",")
        for target in targets:
            workers, backend_kind, kernel_forwarding = gate_variant(target, 0, "unix")
            backend: dict[str, Any] = (
                {"backend_socket": node.socket} if backend_kind == "unix"
                else {"backend_host": node.host, "backend_port": node.port}
            )
            config = GateConfig(listen_port=0, workers=workers, kernel_forwarding=kernel_forwarding,
                                **backend)
            gates[target] = Gate(config).start()
        renewers = [Renewer(gate) for gate in gates.values()]
        for renewer in renewers:
            renewer.__enter__()
        try:
            for round_index in range(options.rounds):
                shift = round_index % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    gate = gates[target]
                    args = sysbench_args("oltp_point_select", Endpoint(target, "127.0.0.1", gate.port),
                                         agent.user, agent.password, 4)
                    pids = gate.worker_pids()
                    before, host_before = cpu_seconds(pids), host_busy_seconds()
                    wall = run_fixed(args, options.threads, options.events)
                    used = cpu_seconds(pids) - before
                    cpu_us.setdefault(target, []).append(used / options.events * 1e6)
                    wall_us.setdefault(target, []).append(wall / options.events * 1e6)
                    host_used = host_busy_seconds() - host_before
                    host_us.setdefault(target, []).append(host_used / options.events * 1e6)
                    print(f"round {round_index + 1} {target:14s} cpu {cpu_us[target][-1]:6.2f} us/query  "
                          f"host {host_us[target][-1]:6.2f} us/query  "
                          f"wall {wall_us[target][-1]:6.2f} us/query", flush=True)
        finally:
            for renewer in renewers:
                renewer.__exit__()
    finally:
        for gate in gates.values():
            gate.stop()
        if not options.lab:
            lab.down()
        shutil.rmtree(tempdir, ignore_errors=True)  # the lab (unless attached to) and haproxy.cfg
    print()
    for target in targets:
        print(f"{target:14s} cpu median {statistics.median(cpu_us[target]):6.2f} us/query "
              f"(all: {', '.join(f'{v:.2f}' for v in cpu_us[target])}); "
              f"wall median {statistics.median(wall_us[target]):6.2f} us/query; "
              f"whole host median {statistics.median(host_us[target]):6.2f} us/query")
    return 0


if __name__ == "__main__":
    sys.exit(main())

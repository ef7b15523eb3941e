"""The gate for a client on another host: direct, HAProxy, the gate's worker relay and its remote path.

Not a test. Starts a one-node lab in network namespaces (``dbfence lab up --netns``: mysqld in
``db1``, the application in ``client``, a bridge between them), HAProxy and two gates *in the
database host's namespace* (one with ``remote_path = "off"``: every byte through its worker; one
with ``remote_path = "on"``: the kernel forwards admitted flows, fenced per packet), and runs
sysbench **in the client namespace** against each in interleaved rounds (the order rotates).
Prints QPS and p95 medians, ratios to direct and HAProxy, the proxies' and the whole host's CPU
per query, and one JSON line. Everything it starts is stopped by pid; the namespaces are removed.

    PYTHONPATH=. python benchmarks/gate.py --topology remote --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pymysql
import pymysql.cursors

from benchmarks.gate import (
    Endpoint,
    Renewer,
    Sample,
    cpu_seconds,
    host_busy_seconds,
    run_sysbench,
    stop_process,
    sysbench_args,
)
from dbfence.breaker.config import GateConfig
from dbfence.breaker.gate import Gate
from dbfence.lab.cluster import LabCluster, LabSpec
from dbfence.lab.netns import NamespaceRunner

TARGETS = ("direct", "haproxy", "gate-worker", "gate-remote")
HAPROXY_PORT, GATE_WORKER_PORT, GATE_REMOTE_PORT = 3310, 3307, 3308


def start_haproxy_in(prefix: list[str], directory: Path, backend: tuple[str, int],
                     threads: int) -> subprocess.Popen[bytes]:
    config = directory / "haproxy-remote.cfg"
    config.write_text(
        "global\n    maxconn 4096\n"
        f"    nbthread {threads}\n"
        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n"
        f"frontend mysql_in\n    bind 0.0.0.0:{HAPROXY_PORT}\n    default_backend mysql_out\n"
        f"backend mysql_out\n    server db1 {backend[0]}:{backend[1]}\n"
    )
    return subprocess.Popen([*prefix, "haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", default="remote")
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default="1,8,32")
    parser.add_argument("--workloads", default="oltp_point_select")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--haproxy-threads", type=int, default=2)
    parser.add_argument("--large-result-mib", type=int, default=0,
                        help="also read a result of this many MiB slowly through each target (0 = skip), "
                             "sampling mysqld's RSS and the kernel's TCP memory meanwhile")
    options = parser.parse_args(argv)
    targets = options.targets.split(",")
    tempdir = Path(tempfile.mkdtemp(prefix="dbfence-bench-remote-"))
    lab = LabCluster.up(LabSpec(directory=tempdir / "lab", mysql_count=1, etcd_members=1, netns=True))
    node = lab.mysql[0]
    agent = lab.accounts["agent"]
    db_prefix, client_prefix = lab.argv_prefix(node.name), lab.argv_prefix("client")
    db_ns = NamespaceRunner(db_prefix[3], threads=2)  # ["ip", "netns", "exec", NAME]
    haproxy: subprocess.Popen[bytes] | None = None
    gates: dict[str, Gate] = {}
    results: dict[str, dict[str, dict[str, list[Sample]]]] = {}
    cpu_per_query: dict[str, list[float]] = {}
    host_cpu_per_query: dict[str, list[float]] = {}
    large: dict[str, dict[str, float]] = {}
    try:
        lab.in_client(_create_database, lab, node.name)
        direct = Endpoint("direct", node.host, node.port)
        tables = 4
        prepare = [*client_prefix,
                   *sysbench_args("oltp_read_write", direct, agent.user, agent.password, tables)]
        subprocess.run([*prepare, "cleanup"], capture_output=True, check=False, timeout=120)
        subprocess.run([*prepare, "--threads=4", "prepare"], capture_output=True, check=True, timeout=300)
        endpoints = {"direct": direct}
        proxy_pids: dict[str, list[int]] = {}
        if "haproxy" in targets:
            haproxy = start_haproxy_in(db_prefix, tempdir, (node.host, node.port), options.haproxy_threads)
            endpoints["haproxy"] = Endpoint("haproxy", node.host, HAPROXY_PORT)
            proxy_pids["haproxy"] = [haproxy.pid]
        for target, port, remote in (("gate-worker", GATE_WORKER_PORT, "off"),
                                     ("gate-remote", GATE_REMOTE_PORT, "on")):
            if target not in targets:
                continue
            gate = Gate(GateConfig(listen_host="0.0.0.0", listen_port=port, backend_host=node.host,
                                   backend_port=node.port, kernel_forwarding="off", remote_path=remote))
            gates[target] = gate
            db_ns.call(gate.start)  # its workers, programs and rule live in the database host's namespace
            endpoints[target] = Endpoint(target, node.host, port)
            proxy_pids[target] = gate.worker_pids()
            print(f"{target}: {gate.config.worker_count} workers, remote path {gate.remote_path}", flush=True)
        time.sleep(1.0)  # HAProxy listening
        renewers = [Renewer(gate) for gate in gates.values()]
        for renewer in renewers:
            renewer.__enter__()
        try:
            for workload in options.workloads.split(","):
                for threads in (int(t) for t in options.threads.split(",")):
                    cell = results.setdefault(workload, {}).setdefault(str(threads), {})
                    for round_index in range(options.rounds):
                        shift = round_index % len(targets)
                        for target in targets[shift:] + targets[:shift]:
                            endpoint = endpoints[target]
                            args = [*client_prefix, *sysbench_args(workload, endpoint, agent.user,
                                                                   agent.password, tables)]
                            pids = proxy_pids.get(target, [])
                            before, host_before = cpu_seconds(pids), host_busy_seconds()
                            sample = run_sysbench(args, threads, options.seconds)
                            queries = sample.qps * options.seconds
                            host_cpu_per_query.setdefault(target, []).append(
                                (host_busy_seconds() - host_before) / queries * 1e6)
                            if pids:
                                cpu_per_query.setdefault(target, []).append(
                                    (cpu_seconds(pids) - before) / queries * 1e6)
                            cell.setdefault(target, []).append(sample)
                            print(f"  {workload} t={threads} round {round_index + 1} {target:12s} "
                                  f"{sample.qps:9.0f} qps  p95 {sample.p95_ms:6.2f} ms", flush=True)
            for target in targets if options.large_result_mib else ():
                large[target] = read_large_result(lab, node.name, endpoints[target], options.large_result_mib)
                print(f"  large result through {target}: {large[target]}", flush=True)
        finally:
            for renewer in renewers:
                renewer.__exit__()
    finally:
        for gate in gates.values():
            db_ns.call(gate.stop)
        db_ns.close()
        if haproxy is not None:
            stop_process(haproxy)
        lab.down()
        subprocess.run(["rm", "-rf", str(tempdir)], check=False)
    summary: dict[str, Any] = {"topology": "remote", "seconds": options.seconds, "rounds": options.rounds,
                               "results": {}}
    ratios = [f"{g}/{o}" for g in targets if g.startswith("gate")
              for o in ("direct", "haproxy") if o in targets]
    print(f"\n{'workload':18s} {'thr':>3s} " + " ".join(f"{t + ' qps':>16s} {'p95':>6s}" for t in targets)
          + "".join(f" {name:>20s}" for name in ratios))
    for workload, by_threads in results.items():
        for thread_key, by_target in by_threads.items():
            medians = {t: {"qps": statistics.median(s.qps for s in samples),
                           "p95_ms": statistics.median(s.p95_ms for s in samples)}
                       for t, samples in by_target.items()}
            row: dict[str, Any] = dict(medians)
            for name in ratios:
                mine, other = name.split("/")
                row[name] = round(medians[mine]["qps"] / medians[other]["qps"], 3)
            summary["results"].setdefault(workload, {})[thread_key] = row
            cells = " ".join(f"{medians[t]['qps']:16.0f} {medians[t]['p95_ms']:6.2f}" for t in targets)
            print(f"{workload:18s} {thread_key:>3s} {cells}" + "".join(f" {row[n]:>20}" for n in ratios))
    summary["proxy_cpu_us_per_query"] = {t: round(statistics.median(v), 2)
                                         for t, v in cpu_per_query.items()}
    summary["host_cpu_us_per_query"] = {t: round(statistics.median(v), 2)
                                        for t, v in host_cpu_per_query.items()}
    print("\nproxy processes' CPU per query (median): " + ", ".join(
        f"{t} {v} us" for t, v in summary["proxy_cpu_us_per_query"].items()))
    print("whole host's CPU per query (median): " + ", ".join(
        f"{t} {v} us" for t, v in summary["host_cpu_us_per_query"].items()))
    if large:
        summary["large_result"] = large
        print("large result read slowly (MiB): " + "; ".join(
            f"{t}: mysqld RSS +{v['mysqld_rss_growth_mib']}, kernel TCP memory max {v['tcp_mem_max_mib']}, "
            f"{v['seconds']} s" for t, v in large.items()))
    print(json.dumps(summary, sort_keys=True))
    return 0


def _tcp_memory_mib() -> float:
    """The kernel's memory for TCP buffers (every namespace), from /proc/net/sockstat (pages)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1]) * 4096 / 2**20
    return 0.0


def read_large_result(lab: LabCluster, name: str, endpoint: Endpoint, mib: int) -> dict[str, float]:
    """A client (in the client namespace) reads a ``mib`` MiB result one row (1 MiB) per 50 ms,
    while mysqld's RSS and the kernel's TCP memory are sampled: a path without flow control
    would show the result piling up in one of them."""
    node = lab.node(name)
    mysqld = psutil.Process(node.pid)
    app = lab.accounts["app"]
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            samples.append((mysqld.memory_info().rss / 2**20, _tcp_memory_mib()))

    def read() -> None:
        conn = pymysql.connect(host=endpoint.host, port=endpoint.port, user=app.user, password=app.password,
                               cursorclass=pymysql.cursors.SSCursor, ssl_disabled=True, read_timeout=120)
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT REPEAT('x', 1048576) FROM app.seq_1_to_{mib}")
                for _ in cur:
                    time.sleep(0.05)
        finally:
            conn.close()

    before = mysqld.memory_info().rss / 2**20
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        lab.in_client(read)
    finally:
        stop.set()
        sampler.join()
    return {"seconds": round(time.monotonic() - started, 1),
            "mysqld_rss_growth_mib": round(max((s[0] for s in samples), default=before) - before, 1),
            "tcp_mem_max_mib": round(max((s[1] for s in samples), default=0.0), 1)}


def _create_database(lab: LabCluster, name: str) -> None:
    with lab.connect(name) as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS sbtest")

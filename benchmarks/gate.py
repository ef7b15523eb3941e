"""Benchmark the gate against a direct connection and HAProxy (TCP mode) with sysbench.

Not a test. Starts a one-node lab MariaDB (or attaches to one with ``--lab``), HAProxy with a
generated config in a temporary directory, and gates (in this process, each with a renewal thread
extending its lease ten times a second like the agent does); runs ``sysbench`` workloads direct,
through HAProxy and through the gate (and gate variants) in interleaved rounds; records the
proxies' CPU time per query; prints QPS, p95 latency and ratios (medians over rounds); measures how long a
block takes to cut 1,000 open connections; ends with one JSON line. Everything it starts is stopped
by pid. Example::

    PYTHONPATH=. python benchmarks/gate.py            # about 6 minutes
    PYTHONPATH=. python benchmarks/gate.py --lab DIR --targets direct,haproxy,gate-w1-tcp
    PYTHONPATH=. python benchmarks/gate.py --topology remote   # a client on another host
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from dbfence.breaker.config import GateConfig
from dbfence.breaker.gate import Gate
from dbfence.lab.cluster import LabCluster, LabSpec
from dbfence.lab.echo import LOGIN_OK, EchoBackend
from dbfence.lab.procs import free_port

# "gate" runs the Gate's defaults (one worker per two CPUs, at least one; TCP to mysqld; a logged-in
# client of this host, as sysbench is, joined to mysqld's socket in the kernel where the host
# allows it); "gate-user" keeps every byte in the worker: the path of a client on another host.
TARGETS = ("direct", "haproxy", "gate", "gate-user")
_QPS = re.compile(r"queries:\s+\d+\s+\(([\d.]+) per sec\.\)")
_P95 = re.compile(r"95th percentile:\s+([\d.]+)")


@dataclass(frozen=True)
class Endpoint:
    name: str
    host: str
    port: int


@dataclass(frozen=True)
class Sample:
    qps: float
    p95_ms: float


def sysbench_args(workload: str, endpoint: Endpoint, user: str, password: str, tables: int) -> list[str]:
    return [
        "sysbench",
        workload,
        "--db-driver=mysql",
        f"--mysql-host={endpoint.host}",
        f"--mysql-port={endpoint.port}",
        f"--mysql-user={user}",
        f"--mysql-password={password}",
        "--mysql-db=sbtest",
        "--mysql-ssl=off",
        f"--tables={tables}",
        "--table-size=10000",
    ]


def run_sysbench(args: list[str], threads: int, seconds: int) -> Sample:
    command = [*args, f"--threads={threads}", f"--time={seconds}", "--percentile=95", "run"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    qps, p95 = _QPS.search(done.stdout), _P95.search(done.stdout)
    if done.returncode != 0 or qps is None or p95 is None:
        raise RuntimeError(f"sysbench failed ({done.returncode}): {done.stdout[-800:]} {done.stderr[-800:]}")
    return Sample(float(qps.group(1)), float(p95.group(1)))


def start_haproxy(
    directory: Path, port: int, backend: tuple[str, int], threads: int
) -> subprocess.Popen[bytes]:
    config = directory / "haproxy.cfg"
    config.write_text(
        "global\n"
        "    maxconn 4096\n"
        f"    nbthread {threads}\n"
        "defaults\n"
        "    mode tcp\n"
        "    timeout connect 5s\n"
        "    timeout client 1h\n"
        "    timeout server 1h\n"
        "frontend mysql_in\n"
        f"    bind 127.0.0.1:{port}\n"
        "    default_backend mysql_out\n"
        "backend mysql_out\n"
        f"    server db1 {backend[0]}:{backend[1]}\n"
    )
    process = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for_port(port, process)
    return process


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


class Renewer:
    """Extends the gate's lease ten times a second, like the agent's renewal loop."""

    def __init__(self, gate: Gate, ttl: float = 5.0) -> None:
        self.gate, self.ttl = gate, ttl
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            self.gate.extend(time.monotonic() + self.ttl)

    def __enter__(self) -> Renewer:
        self.gate.admit(time.monotonic() + self.ttl)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


# --- cutting 1,000 connections ---------------------------------------------------------------
def measure_cut(links: int, workers: int, kernel_forwarding: str) -> float:
    """Milliseconds from ``block()`` until every one of ``links`` client sockets saw its end."""
    socks: list[socket.socket] = []
    with EchoBackend(login_ok=True) as backend:
        config = GateConfig(listen_port=0, backend_port=backend.port, workers=workers,
                            max_connections=links * 2, kernel_forwarding=kernel_forwarding)
        try:
            with Gate(config) as gate:
                gate.admit(time.monotonic() + 600)
                socks = [socket.create_connection(("127.0.0.1", gate.port)) for _ in range(links)]
                for message, size in ((b"login", len(LOGIN_OK)), (b"x", 1)):
                    for sock in socks:
                        sock.sendall(message)
                    for sock in socks:
                        got = b""
                        while len(got) < size:
                            got += sock.recv(size - len(got))
                forwarding = {row.forwarding for row in gate.stats().connections}
                poller = select.epoll()
                for sock in socks:
                    poller.register(sock, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLONESHOT)
                started = time.perf_counter()
                gate.block("benchmark")
                remaining = links
                while remaining:
                    events = poller.poll(5, links)
                    if not events:
                        raise RuntimeError(f"{remaining} connections still open 5 s after the block")
                    remaining -= len(events)
                elapsed = time.perf_counter() - started
                poller.close()
        finally:
            for sock in socks:
                sock.close()
    print(f"cut {links} links forwarded by: {', '.join(sorted(forwarding))}", flush=True)
    return elapsed * 1000


# --- main ------------------------------------------------------------------------------------
def gate_variant(target: str, default_workers: int, default_backend: str) -> tuple[int, str, str]:
    """``gate`` uses the command-line settings; ``gate-w1``, ``gate-unix``, ``gate-user`` (no kernel
    forwarding), ``gate-kernel`` (kernel forwarding or fail), ``gate-w2-user-unix``... override."""
    workers, backend, kernel_forwarding = default_workers, default_backend, "auto"
    for token in target.split("-")[1:]:
        if token in ("tcp", "unix"):
            backend = token
        elif token.startswith("w") and token[1:].isdigit():
            workers = int(token[1:])
        elif token in ("user", "kernel"):
            kernel_forwarding = "off" if token == "user" else "on"
        else:
            raise SystemExit(f"unknown gate variant {target!r}")
    return workers, backend, kernel_forwarding


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def host_busy_seconds() -> float:
    """CPU time of the whole host (every core, every process, softirqs and kernel threads).

    Kernel forwarding does its work in softirq and kworker context, which no proxy process is
    charged for: only the host's total says what a query really costs.
    """
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0) - getattr(times, "steal", 0.0))


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if "--topology=remote" in arguments or " ".join(arguments).find("--topology remote") >= 0:
        # The client on another host (its own network namespace): benchmarks/gate_remote.py.
        from benchmarks.gate_remote import main as remote_main  # noqa: PLC0415 (needs root, namespaces)

        return remote_main(arguments)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=4, help="length of each sysbench run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (medians are reported)")
    parser.add_argument("--threads", default="1,8,32")
    parser.add_argument("--workloads", default="oltp_point_select,oltp_read_write")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="direct, haproxy, gate and gate variants such as gate-w1 or gate-tcp")
    parser.add_argument("--gate-workers", type=int, default=0, help="0 = one per two cores")
    parser.add_argument("--gate-backend", choices=("tcp", "unix"), default="tcp")
    parser.add_argument("--haproxy-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--lab", type=Path, help="attach to a running lab instead of starting one")
    parser.add_argument("--skip-cut", action="store_true", help="skip the 1,000-connection cut measurement")
    parser.add_argument("--topology", choices=("local", "remote"), default="local",
                        help="local: sysbench on the database host; remote: in a namespace of its own "
                             "(benchmarks/gate_remote.py: direct, haproxy, gate-worker, gate-remote)")
    options = parser.parse_args(argv)
    if shutil.which("sysbench") is None or shutil.which("haproxy") is None:
        print("sysbench and haproxy must be on PATH", file=sys.stderr)
        return 2

    workloads = options.workloads.split(",")
    thread_counts = [int(t) for t in options.threads.split(",")]
    targets = options.targets.split(",")
    tempdir = Path(tempfile.mkdtemp(prefix="dbfence-bench-"))
    lab = LabCluster.load(options.lab) if options.lab else LabCluster.up(
        LabSpec(directory=tempdir / "lab", mysql_count=1, etcd_members=1)
    )
    node = lab.mysql[0]
    agent = lab.accounts["agent"]
    haproxy: subprocess.Popen[bytes] | None = None
    gates: dict[str, Gate] = {}
    results: dict[str, dict[str, dict[str, list[Sample]]]] = {}
    cpu_per_query: dict[str, list[float]] = {}
    host_cpu_per_query: dict[str, list[float]] = {}
    cut_ms: dict[str, float] = {}
    try:
        with lab.connect(node.name) as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE IF NOT EXISTS sbtest")
        direct = Endpoint("direct", node.host, node.port)
        tables = 4
        prepare = sysbench_args("oltp_read_write", direct, agent.user, agent.password, tables)
        subprocess.run([*prepare, "cleanup"], capture_output=True, check=False, timeout=120)
        subprocess.run([*prepare, "--threads=4", "prepare"], capture_output=True, check=True, timeout=300)

        endpoints: dict[str, Endpoint] = {"direct": direct}
        proxy_pids: dict[str, list[int]] = {}
        if "haproxy" in targets:
            haproxy_port = free_port()
            haproxy = start_haproxy(tempdir, haproxy_port, (node.host, node.port), options.haproxy_threads)
            endpoints["haproxy"] = Endpoint("haproxy", "127.0.0.1", haproxy_port)
            proxy_pids["haproxy"] = [haproxy.pid]
        for target in (t for t in targets if t.startswith("gate")):
            workers, backend_kind, kernel_forwarding = gate_variant(
                target, options.gate_workers, options.gate_backend)
            backend: dict[str, Any] = (
                {"backend_socket": node.socket} if backend_kind == "unix"
                else {"backend_host": node.host, "backend_port": node.port}
            )
            gate = Gate(GateConfig(listen_port=0, workers=workers, kernel_forwarding=kernel_forwarding,
                                   **backend))
            gates[target] = gate
            gate.start()
            endpoints[target] = Endpoint(target, "127.0.0.1", gate.port)
            proxy_pids[target] = gate.worker_pids()
            forwarding = f"off ({gate.kernel_forwarding_off})" if gate.kernel_forwarding_off else "on"
            print(f"{target}: {gate.config.worker_count} workers, backend {backend_kind}, "
                  f"kernel forwarding {forwarding}", flush=True)
        print(f"haproxy: {options.haproxy_threads} threads; {options.rounds} rounds x {options.seconds}s",
              flush=True)
        renewers = [Renewer(gate) for gate in gates.values()]
        for renewer in renewers:
            renewer.__enter__()
        try:
            for workload in workloads:
                for threads in thread_counts:
                    cell = results.setdefault(workload, {}).setdefault(str(threads), {})
                    for round_index in range(options.rounds):
                        # Rotate the order each round so no target always runs first (warm/cold).
                        shift = round_index % len(targets)
                        for target in targets[shift:] + targets[:shift]:
                            endpoint = endpoints[target]
                            args = sysbench_args(workload, endpoint, agent.user, agent.password, tables)
                            pids = proxy_pids.get(target, [])
                            before, host_before = cpu_seconds(pids), host_busy_seconds()
                            sample = run_sysbench(args, threads, options.seconds)
                            queries = sample.qps * options.seconds
                            host_used = host_busy_seconds() - host_before
                            host_cpu_per_query.setdefault(target, []).append(host_used / queries * 1e6)
                            if pids:
                                used = cpu_seconds(pids) - before
                                cpu_per_query.setdefault(target, []).append(used / queries * 1e6)
                            cell.setdefault(target, []).append(sample)
                            print(f"  {workload} t={threads} round {round_index + 1} {target:10s} "
                                  f"{sample.qps:9.0f} qps  p95 {sample.p95_ms:6.2f} ms", flush=True)
        finally:
            for renewer in renewers:
                renewer.__exit__()
        for gate in gates.values():
            gate.stop()
        if not options.skip_cut:
            for kernel_forwarding in ("auto", "off"):
                cut_ms[kernel_forwarding] = measure_cut(1000, options.gate_workers, kernel_forwarding)
    finally:
        for gate in gates.values():
            gate.stop()
        if haproxy is not None:
            stop_process(haproxy)
        if not options.lab:
            lab.down()
        shutil.rmtree(tempdir, ignore_errors=True)  # the lab (unless attached to) and haproxy.cfg

    summary: dict[str, Any] = {"seconds": options.seconds, "rounds": options.rounds,
                               "gate_workers": GateConfig(workers=options.gate_workers).worker_count,
                               "gate_backend": options.gate_backend, "results": {}}
    print()
    gate_targets = [t for t in targets if t.startswith("gate")]
    ratio_names = [f"{g}/{o}" for g in gate_targets for o in ("direct", "haproxy") if o in targets]
    print(f"{'workload':18s} {'thr':>3s} " + " ".join(f"{t + ' qps':>14s} {'p95':>6s}" for t in targets)
          + "".join(f" {name:>15s}" for name in ratio_names))
    for workload, by_threads in results.items():
        for thread_key, by_target in by_threads.items():
            medians = {
                target: {"qps": statistics.median(s.qps for s in samples),
                         "p95_ms": statistics.median(s.p95_ms for s in samples)}
                for target, samples in by_target.items()
            }
            row: dict[str, Any] = dict(medians)
            for name in ratio_names:
                mine, other = name.split("/")
                row[name] = round(medians[mine]["qps"] / medians[other]["qps"], 3)
            summary["results"].setdefault(workload, {})[thread_key] = row
            cells = " ".join(f"{medians[t]['qps']:14.0f} {medians[t]['p95_ms']:6.2f}" for t in targets)
            print(f"{workload:18s} {thread_key:>3s} {cells}" + "".join(f" {row[n]:>15}" for n in ratio_names))
    if cpu_per_query:
        summary["proxy_cpu_us_per_query"] = {
            target: round(statistics.median(values), 2) for target, values in cpu_per_query.items()
        }
        print("\nproxy processes' CPU per query (median, user+sys, all workloads): " + ", ".join(
            f"{target} {value} us" for target, value in summary["proxy_cpu_us_per_query"].items()))
    if host_cpu_per_query:
        summary["host_cpu_us_per_query"] = {
            target: round(statistics.median(values), 2) for target, values in host_cpu_per_query.items()
        }
        print("whole host's CPU per query (median; sysbench, mysqld, proxy, kernel): " + ", ".join(
            f"{target} {value} us" for target, value in summary["host_cpu_us_per_query"].items()))
    for kernel_forwarding, milliseconds in cut_ms.items():
        print(f"block cut 1000 open connections in {milliseconds:.1f} ms "
              f"(kernel_forwarding={kernel_forwarding})")
        summary.setdefault("cut_1000_ms", {})[kernel_forwarding] = round(milliseconds, 1)
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What serving the gate workers' counters costs, two ways.

1. The way dbfence does it: a prometheus_client Collector that asks the running gate's workers for
   their counters at scrape time (one control-socket round trip per worker). Measured: the time of
   a whole /metrics render against a 2-worker gate.
2. prometheus_client's multiprocess mode, the alternative: each worker would increment a Counter
   backed by an mmap'ed file in PROMETHEUS_MULTIPROC_DIR. Measured: the cost of one increment
   there, next to a plain in-memory Counter and a Python int (what the workers do today).

    PYTHONPATH=. .venv/bin/python benchmarks/metrics_scrape.py [--scrapes 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from dbfence.breaker.config import GateConfig
from dbfence.breaker.gate import Gate
from dbfence.discovery.metrics import GateCollector, Metrics
from dbfence.lab.echo import EchoBackend

_INC_SCRIPT = """
import time, sys
from prometheus_client import Counter, CollectorRegistry
counter = Counter("c", "c", ["worker"], registry=CollectorRegistry()).labels(worker="0")
n = 200_000
start = time.perf_counter()
for _ in range(n):
    counter.inc()
print((time.perf_counter() - start) / n * 1e9)
"""


def scrape_times(scrapes: int, workers: int) -> list[float]:
    metrics = Metrics()
    with EchoBackend() as backend, Gate(GateConfig(listen_port=0, workers=workers, backend_port=backend.port,
                                                   kernel_forwarding="off")) as gate:
        metrics.add_collector(GateCollector(gate))
        gate.admit(time.monotonic() + 600)
        times = []
        for _ in range(scrapes):
            start = time.perf_counter()
            metrics.render()
            times.append(time.perf_counter() - start)
    return times


def inc_ns(multiprocess: bool) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with tempfile.TemporaryDirectory() as directory:
        if multiprocess:
            env["PROMETHEUS_MULTIPROC_DIR"] = directory
        out = subprocess.run([sys.executable, "-c", _INC_SCRIPT], env=env, capture_output=True, text=True,
                             check=True)
    return float(out.stdout)


def int_ns() -> float:
    n, count = 200_000, 0
    start = time.perf_counter()
    while count < n:
        count += 1
    return (time.perf_counter() - start) / n * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scrapes", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    times = sorted(scrape_times(args.scrapes, args.workers))
    median = statistics.median(times)
    print(f"/metrics render with {args.workers} gate workers asked: median {median * 1e3:.2f} ms, "
          f"p99 {times[int(len(times) * 0.99) - 1] * 1e3:.2f} ms, max {times[-1] * 1e3:.2f} ms "
          f"({args.scrapes} scrapes)")
    print(f"one increment: python int {int_ns():.0f} ns, prometheus_client Counter {inc_ns(False):.0f} ns, "
          f"multiprocess-mode Counter {inc_ns(True):.0f} ns")


if __name__ == "__main__":
    main()

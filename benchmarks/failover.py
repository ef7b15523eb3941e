"""Failover time on real servers: from the fault to the first acknowledged write through discovery.

Not a test: a measurement. It starts a lab of 3 MariaDB + etcd + 3 agents, keeps a writer
inserting rows through discovery (the etcd key) and the gate, and injects one fault per round:

* ``mysqld-kill``: ``kill -9`` of the primary's mysqld (the agent fences, releases, a replica
  promotes). The old mysqld is restarted and rejoins before the next round.
* ``host-freeze``: SIGSTOP of the primary's mysqld, agent and gate workers together, as if the
  host vanished: nothing releases the lock, so the replicas wait for the lease to expire.

It prints each round, then the median and maximum, and ends with one JSON line.

    .venv/bin/python benchmarks/failover.py --fault mysqld-kill --runs 5
    .venv/bin/python benchmarks/failover.py --fault host-freeze --runs 3 --ttl 10 --margin 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pymysql

from dbfence.discovery import NoPrimary, primary_address
from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import LabCluster, LabSpec
from dbfence.lab.wait import wait_until


@dataclass
class Writer:
    """Inserts rows through discovery; records when each was acknowledged and by which gate."""

    lab: LabCluster
    acks: list[tuple[float, str]] = field(default_factory=list)
    refused: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    next_id: int = 1

    def run(self) -> None:
        app = self.lab.accounts["app"]
        conn = None
        address = ("", 0)
        while not self.stop.is_set():
            try:
                if conn is None:
                    address = primary_address(self.lab.cluster, etcd=self.lab.dcs_endpoints)
                    conn = pymysql.connect(host=address[0], port=address[1], user=app.user,
                                           password=app.password, autocommit=True, connect_timeout=1,
                                           # An application's own timeouts bound how long it
                                           # waits on a frozen host; 2 s is a common setting.
                                           read_timeout=2, write_timeout=2, ssl_disabled=True)
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO app.bench (id) VALUES (%s)", (self.next_id,))
                self.next_id += 1
                self.acks.append((time.monotonic(), address[0]))
            except (pymysql.MySQLError, NoPrimary, OSError):
                self.refused += 1
                self.next_id += 1  # the outcome may be unknown: never reuse an id
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                time.sleep(0.02)
            time.sleep(0.01)


def gate_host(lab: LabCluster, name: str) -> str:
    return lab.agent(name).address


def host_processes(lab: LabCluster, name: str) -> list[psutil.Process]:
    agent = psutil.Process(lab.agent(name).pid)
    return [psutil.Process(lab.node(name).pid), agent, *agent.children(recursive=True)]


def one_round(lab: LabCluster, writer: Writer, fault: str) -> float:
    primary = lab.primaries()[0]
    old_host = gate_host(lab, primary)
    wait_until(lambda: bool(writer.acks) and writer.acks[-1][1] == old_host, timeout=30,
               what="the writer to write through the primary")
    frozen: list[psutil.Process] = []
    started = time.monotonic()
    if fault == "mysqld-kill":
        lab.kill_mysql(primary)
    else:
        frozen = host_processes(lab, primary)
        for proc in frozen:
            proc.send_signal(signal.SIGSTOP)
    try:
        ack = wait_until(lambda: next((t for t, h in writer.acks if t > started and h != old_host), None),
                         timeout=120, what="a write acknowledged by the new primary")
    finally:
        for proc in frozen:
            proc.send_signal(signal.SIGCONT)
    seconds = ack - started
    if fault == "mysqld-kill":
        wait_until(lambda: not lab.node(primary).process.alive(), timeout=10, what="mysqld to die")
        lab.start_mysql(primary)
        wait_until(lambda: _role(lab, primary) == "replica", timeout=60, what=f"{primary} to rejoin")
    # A frozen host may hold a commit it wrote but nobody acknowledged: an errant transaction that
    # keeps it fenced for good (dead stays dead), so every host-freeze round gets a fresh lab.
    return seconds


def _role(lab: LabCluster, name: str) -> str:
    from dbfence.lab.agents import http_status  # noqa: PLC0415

    code, body = http_status(lab.agent(name), "/status")
    return str(json.loads(body).get("role")) if code else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fault", choices=["mysqld-kill", "host-freeze"], default="mysqld-kill")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ttl", type=float, default=3.0)
    parser.add_argument("--margin", type=float, default=1.0)
    args = parser.parse_args()
    tuning = AgentTuning(ttl=args.ttl, margin=args.margin)
    results: list[float] = []
    acknowledged = refused = 0
    rounds_per_lab = args.runs if args.fault == "mysqld-kill" else 1
    while len(results) < args.runs:
        root = Path(tempfile.mkdtemp(prefix="dbfence-bench-"))
        lab = LabCluster.up(LabSpec(directory=root / "lab", mysql_count=3, etcd_members=3, agents=True,
                                    agent_tuning=tuning))
        writer = Writer(lab)
        thread = threading.Thread(target=writer.run, daemon=True)
        try:
            with lab.connect(lab.primaries()[0]) as conn, conn.cursor() as cur:
                cur.execute("CREATE TABLE app.bench (id INT PRIMARY KEY)")
            thread.start()
            for _ in range(min(rounds_per_lab, args.runs - len(results))):
                seconds = one_round(lab, writer, args.fault)
                results.append(seconds)
                print(f"run {len(results)}: {args.fault} -> first acknowledged write on the new primary "
                      f"after {seconds:.2f}s", flush=True)
        finally:
            writer.stop.set()
            thread.join(timeout=15)
            lab.down()
            acknowledged += len(writer.acks)
            refused += writer.refused
    summary = {"fault": args.fault, "runs": len(results), "ttl": args.ttl, "margin": args.margin,
               "median_s": round(statistics.median(results), 3), "max_s": round(max(results), 3),
               "all_s": [round(r, 3) for r in results], "writes_acknowledged": acknowledged,
               "attempts_refused": refused}
    print(f"{args.fault}: median {summary['median_s']:.2f}s, max {summary['max_s']:.2f}s over "
          f"{len(results)} runs (ttl {args.ttl}s, margin {args.margin}s)")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

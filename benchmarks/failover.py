"""Failover time on real servers: from the fault to the first acknowledged write through discovery.

Not a test: a measurement. It starts a lab of 3 MariaDB + etcd + 3 agents, keeps a writer
inserting rows through discovery (the etcd key) and the gate, and injects one fault per round:

* ``mysqld-kill``: ``kill -9`` of the primary's mysqld (the agent fences, releases, a replica
  promotes). The old mysqld is restarted and rejoins before the next round.
* ``host-freeze``: SIGSTOP of the primary's mysqld, agent and gate workers together, as if the
  host vanished: nothing releases the lock, so the replicas wait for the lease to expire.
* ``switchover``: ``dbfence switchover --to`` a replica (alternating), as an operator would. The
  round's figure is the writer's gap: from its last write acknowledged by the old primary to its
  first one acknowledged by the new one (the window of refused writes); the summary adds the
  whole switchover as the command reports it.

It prints each round, then the median and maximum, and ends with one JSON line.

    .venv/bin/python benchmarks/failover.py --fault mysqld-kill --runs 5
    .venv/bin/python benchmarks/failover.py --fault host-freeze --runs 3 --ttl 10 --margin 2
    .venv/bin/python benchmarks/failover.py --fault switchover --runs 5 --ttl 10
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
from click.testing import CliRunner

from dbfence.cli import main as dbfence_main
from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import LabCluster, LabSpec
from dbfence.lab.wait import WaitTimeout, wait_until
from dbfence.lab.workload import DiscoveryWriter


def gate_host(lab: LabCluster, name: str) -> str:
    return lab.agent(name).address


def host_processes(lab: LabCluster, name: str) -> list[psutil.Process]:
    agent = psutil.Process(lab.agent(name).pid)
    return [psutil.Process(lab.node(name).pid), agent, *agent.children(recursive=True)]


def switchover_round(lab: LabCluster, writer: DiscoveryWriter) -> tuple[float, float]:
    """(refused-writes gap, seconds the command reported) for one switchover to another replica."""
    primary = lab.wait_settled()
    old_host = gate_host(lab, primary)
    wait_until(lambda: writer.last_gate() == old_host, timeout=30,
               what="the writer to write through the primary")
    target = sorted(a.name for a in lab.agents if a.name != primary)[0]
    # A replica that just rejoined confirms every probe once before it counts as healthy.
    wait_until(lambda: lab.agent_status(target).get("database", {}).get("healthy"), timeout=30,
               what=f"{target} to be healthy")
    started = time.monotonic()
    result = CliRunner().invoke(dbfence_main, ["switchover", "--to", target, "--timeout", "60",
                                               "--etcd", ",".join(lab.dcs_endpoints),
                                               "--cluster", lab.cluster])
    if result.exit_code != 0:
        raise RuntimeError(f"switchover failed: {result.output}")
    reported = time.monotonic() - started
    first_new = wait_until(lambda: writer.first_ack_after(started, old_host), timeout=60,
                           what="a write acknowledged by the new primary")
    last_old = max((t for t, via in writer.acknowledged.values() if via == old_host and t < first_new),
                   default=started)
    print(f"   {result.output.strip().splitlines()[-1]}", flush=True)
    lab.wait_settled()  # the old primary rejoins before the next round switches back
    return first_new - last_old, reported


def lost_writes(lab: LabCluster, writer: DiscoveryWriter) -> list[int]:
    """Acknowledged rows missing on the current primary (must be none)."""
    with lab.connect(lab.wait_settled()) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id FROM {writer.table}")
        present = {int(row[0]) for row in cur.fetchall()}
    return sorted(set(writer.acknowledged) - present)


class StaysFenced(Exception):
    """The killed primary came back fenced (a transaction of its own that no replica has: dead
    stays dead): the failover counts, the next round needs a fresh lab."""

    def __init__(self, node: str, reason: object, seconds: float) -> None:
        super().__init__(f"{node} stays fenced ({reason}) after a failover of {seconds:.2f}s")
        self.seconds = seconds


def one_round(lab: LabCluster, writer: DiscoveryWriter, fault: str) -> float:
    primary = lab.primaries()[0]
    old_host = gate_host(lab, primary)
    wait_until(lambda: writer.last_gate() == old_host, timeout=30,
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
        ack = wait_until(lambda: writer.first_ack_after(started, old_host),
                         timeout=120, what="a write acknowledged by the new primary")
    finally:
        for proc in frozen:
            proc.send_signal(signal.SIGCONT)
    seconds = ack - started
    if fault == "mysqld-kill":
        wait_until(lambda: not lab.node(primary).process.alive(), timeout=10, what="mysqld to die")
        lab.start_mysql(primary)
        try:
            wait_until(lambda: _role(lab, primary) == "replica", timeout=60, what=f"{primary} to rejoin")
        except WaitTimeout:
            if _role(lab, primary) != "fenced":
                raise
            reason = lab.agent_status(primary).get("fenced_reason")
            raise StaysFenced(primary, reason, seconds) from None
    # A frozen host may hold a commit it wrote but nobody acknowledged: an errant transaction that
    # keeps it fenced for good (dead stays dead), so every host-freeze round gets a fresh lab.
    return seconds


def _role(lab: LabCluster, name: str) -> str:
    return str(lab.agent_status(name).get("role", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fault", choices=["mysqld-kill", "host-freeze", "switchover"],
                        default="mysqld-kill")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ttl", type=float, default=3.0)
    parser.add_argument("--margin", type=float, default=1.0)
    parser.add_argument("--interval", type=float, default=0.1,
                        help="seconds between probe rounds (the lab's 0.1; the product's default is 0.2)")
    parser.add_argument("--logs", type=Path, help="keep each lab's agent logs (JSON action timelines) here")
    args = parser.parse_args()
    tuning = AgentTuning(ttl=args.ttl, margin=args.margin, interval=args.interval)
    results: list[float] = []
    reported: list[float] = []
    lost: list[int] = []
    acknowledged = refused = 0
    rounds_per_lab = 1 if args.fault == "host-freeze" else args.runs
    while len(results) < args.runs:
        root = Path(tempfile.mkdtemp(prefix="dbfence-bench-"))
        lab = LabCluster.up(LabSpec(directory=root / "lab", mysql_count=3, etcd_members=3, agents=True,
                                    agent_tuning=tuning))
        # An application's own timeouts bound how long it waits on a frozen host; 2 s is common.
        writer = DiscoveryWriter(lab, "app.bench", timeout=2.0)
        try:
            writer.create_table(lab.primaries()[0])
            writer.start()
            for _ in range(min(rounds_per_lab, args.runs - len(results))):
                if args.fault == "switchover":
                    seconds, whole = switchover_round(lab, writer)
                    reported.append(whole)
                    print(f"run {len(results) + 1}: switchover -> writes refused for {seconds:.2f}s, "
                          f"command done after {whole:.2f}s", flush=True)
                else:
                    try:
                        seconds = one_round(lab, writer, args.fault)
                    except StaysFenced as stays:
                        print(f"run {len(results) + 1}: {stays}; counted, and a fresh lab for the next",
                              flush=True)
                        results.append(stays.seconds)
                        break
                    print(f"run {len(results) + 1}: {args.fault} -> first acknowledged write on the new "
                          f"primary after {seconds:.2f}s", flush=True)
                results.append(seconds)
            if args.fault == "switchover":
                writer.finish()
                lost += lost_writes(lab, writer)
        finally:
            writer.finish()
            lab.down()
            if args.logs is not None:
                kept = args.logs / root.name
                shutil.copytree(lab.directory / "agents", kept, ignore=shutil.ignore_patterns("*.cnf"))
                for node in lab.mysql:
                    shutil.copy(Path(node.datadir).parent / "error.log", kept / f"{node.name}-mysqld.log")
            shutil.rmtree(root, ignore_errors=True)  # ~400 MB of MariaDB data per lab
            acknowledged += len(writer.acknowledged)
            refused += writer.refused
    summary = {"fault": args.fault, "runs": len(results), "ttl": args.ttl, "margin": args.margin,
               "median_s": round(statistics.median(results), 3), "max_s": round(max(results), 3),
               "all_s": [round(r, 3) for r in results], "writes_acknowledged": acknowledged,
               "attempts_refused": refused}
    if args.fault == "switchover":
        summary["command_median_s"] = round(statistics.median(reported), 3)
        summary["command_max_s"] = round(max(reported), 3)
        summary["acknowledged_writes_lost"] = len(lost)
        print(f"switchover: writes refused for median {summary['median_s']:.2f}s (max "
              f"{summary['max_s']:.2f}s); command median {summary['command_median_s']:.2f}s; "
              f"acknowledged writes lost: {len(lost)}")
    print(f"{args.fault}: median {summary['median_s']:.2f}s, max {summary['max_s']:.2f}s over "
          f"{len(results)} runs (ttl {args.ttl}s, margin {args.margin}s)")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Whole-cluster events on real MariaDB and etcd (issue 19): every agent restarted at once, and a
primary that loses its mysqld and the whole DCS at the same moment."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pymysql
import pytest
from click.testing import CliRunner

from dbfence.cli import main
from dbfence.lab import agents as agents_mod
from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import LabCluster
from dbfence.lab.wait import wait_until
from dbfence.lab.workload import DiscoveryWriter
from tests.conftest import LabFactory
from tests.e2e.e2e_helpers import app_connect, discover

pytestmark = pytest.mark.timeout(240)

TTL = 3.0  # the lab agents' (AgentTuning)


def agent_lines(lab: LabCluster, name: str) -> list[str]:
    return Path(lab.agent(name).log).read_text(errors="replace").splitlines()


def restart_every_agent(lab: LabCluster) -> tuple[float, float]:
    """SIGTERM to every agent at once (a fleet-wide `systemctl restart`), all started again at
    once with the same config when they have exited. Returns when they were started again and
    when all of them answered (monotonic): the agents' own start (a Python process, its gate
    workers) takes seconds on a loaded 2-core machine, before any decision is made."""
    old = lab.agents
    for agent in old:
        lab.kill_agent(agent.name, signal.SIGTERM)
    wait_until(lambda: not any(agent.process.alive() for agent in old), timeout=30,
               what="every agent to stop")
    restarted = time.monotonic()
    with ThreadPoolExecutor(len(old)) as pool:
        started = list(pool.map(lambda agent: agents_mod.start_agent(
            agent.name, agent.address, agent.gate_port, agent.http_port, Path(agent.config)), old))
    answering = time.monotonic()
    for agent in started:
        # One at a time: the lab's manifest is what stops them at the end (restart_agent, in
        # parallel, could lose an update to it).
        lab._record_agent(agent)
    return restarted, answering


def wait_for_admitting_primary(lab: LabCluster, since: float) -> tuple[str, float]:
    """The primary that admits a client write first, and how long after ``since`` it did."""
    def admitted() -> str | None:
        primaries = lab.primaries()
        if len(primaries) != 1:
            return None
        try:
            host, port = discover(lab)
            with app_connect(lab, host, port, timeout=2.0) as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
        except Exception:  # no primary yet, refused by a gate, a connection cut: not yet
            return None
        return primaries[0]

    primary = wait_until(admitted, timeout=60, interval=0.05, what="a primary admitting clients")
    return primary, time.monotonic() - since


def slow_write_in_flight(lab: LabCluster, row_id: int) -> threading.Thread:
    """A write that is still executing through the gate when the agents get SIGTERM."""
    started = threading.Event()

    def write() -> None:
        try:
            host, port = discover(lab)
            with app_connect(lab, host, port) as conn, conn.cursor() as cur:
                started.set()
                cur.execute("INSERT INTO app.restarts (id, via) SELECT %s, SLEEP(0.5)", (row_id,))
        except (pymysql.MySQLError, OSError):
            pass  # cut by the fence: never acknowledged, so it may be lost
        finally:
            started.set()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    started.wait(5)
    time.sleep(0.1)  # the statement is on its way (it sleeps 0.5 s inside mysqld)
    return thread


def operator(lab: LabCluster, *args: str) -> None:
    argv = [*args, "--etcd", ",".join(lab.dcs_endpoints), "--cluster", lab.cluster]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output


def test_a_primary_whose_agent_restarts_wins_again_and_its_promotion_finishes(
    lab_factory: LabFactory,
) -> None:
    """The first finding, made deterministic: the primary's agent restarts while its replicas
    detach (the lock is free), then it wins the race again (same data, smallest name). Its
    semi-sync is still on and it has no replication to stop, so its fencing-token write waits
    for an acknowledgement: the replicas used to wait for it to be PRIMARY, forever. A pause
    holds the race until all of that is in place (replicas detach while paused)."""
    lab = lab_factory(mysql_count=3, dcs="etcd", agents=True)
    primary = lab.wait_settled()
    replicas = [agent.name for agent in lab.agents if agent.name != primary]
    if primary != min(agent.name for agent in lab.agents):
        pytest.skip(f"{primary} would not win a tie on names")  # the lab elects db1 first
    operator(lab, "pause", "--reason", "test")
    wait_until(lambda: all(lab.agent_status(name)["intent"]["paused"] for name in replicas),
               timeout=10, what="the replicas to see the pause")
    lab.kill_agent(primary, signal.SIGTERM)
    wait_until(lambda: not lab.agent(primary).process.alive(), timeout=30,
               what=f"{primary}'s agent to stop")
    wait_until(lambda: all(any('"action": "DetachSource"' in line for line in agent_lines(lab, name))
                           for name in replicas),
               timeout=20, what="the replicas to detach from the old primary")
    lab.restart_agent(primary)
    def ready_to_race() -> bool:  # as a replica whose health is confirmed, as a racer needs
        status = lab.agent_status(primary)
        return status.get("role") == "replica" and status.get("database", {}).get("healthy") is True

    wait_until(ready_to_race, timeout=20, what=f"{primary}'s agent to start")
    operator(lab, "resume")
    resumed = time.monotonic()
    winner, seconds = wait_for_admitting_primary(lab, resumed)
    print(f"\n{primary}'s agent restarted, replicas detached, resume -> {winner} admits "
          f"after {seconds:.2f} s")
    assert winner == primary, f"{winner} won, not the restarted primary: the path was not taken"
    assert any('"to": "promoting"' in line for line in agent_lines(lab, primary))
    assert seconds <= 2 * TTL
    lab.wait_settled(timeout=30)


def test_every_agent_restarted_at_once_gives_a_primary_within_two_ttl_and_loses_no_write(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(mysql_count=3, dcs="etcd", agents=True)
    # Round 1: right after the lab came up (the reproduction: a second after `lab up`).
    timings: list[float] = []  # from every agent answering again to a primary admitting
    since_restart: list[float] = []  # from the restart itself, process start included

    def restart_round() -> str:
        restarted, answering = restart_every_agent(lab)
        primary, seconds = wait_for_admitting_primary(lab, answering)
        timings.append(seconds)
        since_restart.append(seconds + answering - restarted)
        return primary

    primary = restart_round()

    writer = DiscoveryWriter(lab, "app.restarts", timeout=5.0, clients=2)
    writer.create_table(primary)
    writer.start()
    try:
        for round_number in range(2, 5):
            wanted = 5 * round_number
            wait_until(lambda wanted=wanted: len(writer.acknowledged) >= wanted, timeout=30,  # type: ignore[misc]
                       what="writes acknowledged before the restart")
            in_flight = slow_write_in_flight(lab, 1_000_000 + round_number) if round_number == 2 else None
            primary = restart_round()
            if in_flight is not None:
                in_flight.join(timeout=10)
        acknowledged_before_end = len(writer.acknowledged)
        wait_until(lambda: len(writer.acknowledged) > acknowledged_before_end + 5, timeout=30,
                   what="writes acknowledged after the last restart")
    finally:
        writer.finish()
    print(f"\nrestart of every agent -> a primary admits {[round(t, 2) for t in timings]} s after they "
          f"all answer, {[round(t, 2) for t in since_restart]} s after the restart "
          f"(2 x TTL = {2 * TTL:g} s); {len(writer.acknowledged)} writes acknowledged, "
          f"{writer.refused} refused, {len(writer.unknown)} unknown")
    acknowledged = set(writer.acknowledged)
    final = wait_until(settled_or_errant(lab), timeout=30, what="one primary, every other node following it")
    lost = acknowledged - rows_on_table(lab, final)
    assert not lost, f"acknowledged writes missing on the primary {final}: {sorted(lost)[:20]}"
    assert all(seconds <= 2 * TTL for seconds in timings), timings


def settled_or_errant(lab: LabCluster) -> Callable[[], str | None]:
    """One primary admits and every other node follows it, or is fenced for errant GTIDs: a
    primary stopped while a commit waited for its semi-sync ack keeps that commit (it was never
    acknowledged: the fence cut the client), and when another node wins the restart race first
    it cannot follow (that needs an operator or a rebuild)."""
    def settled() -> str | None:
        primaries = lab.primaries()
        if len(primaries) != 1:
            return None
        for agent in lab.agents:
            if agent.name == primaries[0]:
                continue
            status = lab.agent_status(agent.name)
            following = status.get("role") == "replica" and \
                status.get("database", {}).get("replication_source") == primaries[0]
            errant = status.get("role") == "fenced" and status.get("fenced_reason") == "errant_gtids"
            if errant:
                print(f"\n{agent.name} is fenced with errant GTIDs {status['database'].get('errant')}")
            if not (following or errant):
                return None
        return primaries[0]
    return settled


def rows_on_table(lab: LabCluster, node: str) -> set[int]:
    with lab.connect(node) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM app.restarts")
        return {int(row[0] if isinstance(row, tuple) else row["id"]) for row in cur.fetchall()}


def test_a_primary_without_mysqld_and_dcs_stays_quiet_and_the_cluster_recovers(
    lab_factory: LabFactory,
) -> None:
    """kill -9 of the primary's mysqld and of every etcd member at the same moment: the former
    primary's agent fences within a lease (TTL 3 s) and then has nothing it can do. It used to
    ask for a release of its unrenewable lease every round, woken by its own failure: 2,500 log
    lines a second at 100 % of a core. The spin began once it was FENCED (a lease after the
    kill); it is watched from then on for 20 s, long enough to see 50,000 lines of the old spin,
    and every line since the kill counts. The agents probe mysqld at the product's default
    interval (0.2 s, not the lab's 0.1 s): those probes of a dead mysqld are most of what an
    idle agent spends, and the bound is about the agent's own loops."""
    lab = lab_factory(mysql_count=3, dcs="etcd", etcd_members=3, agents=True,
                      agent_tuning=AgentTuning(interval=0.2))
    primary = lab.primaries()[0]
    agent = psutil.Process(lab.agent(primary).pid)
    lines_before = len(agent_lines(lab, primary))
    lab.kill_mysql(primary)
    for member in lab.etcd:
        lab.kill_etcd(member.name)
    wait_until(lambda: lab.agent_status(primary).get("role") == "fenced", timeout=4 * TTL,
               what=f"{primary} to fence itself")
    cpu_before = agent.cpu_times()
    started = time.monotonic()
    time.sleep(20.0)  # the measurement window itself, not a synchronisation
    cpu = agent.cpu_times()
    elapsed = time.monotonic() - started
    used = (cpu.user + cpu.system) - (cpu_before.user + cpu_before.system)
    new_lines = agent_lines(lab, primary)[lines_before:]
    print(f"\nmysqld and every etcd member gone: {primary}'s agent used {100 * used / elapsed:.2f} % of a "
          f"core and wrote {len(new_lines)} log lines in {elapsed:.1f} s")
    assert used / elapsed < 0.02, f"{100 * used / elapsed:.1f} % of a core"
    assert len(new_lines) < 100, "\n".join(new_lines[-30:])

    for member in lab.etcd:
        lab.start_etcd(member.name)
    lab.start_mysql(primary)
    lab.wait_settled(timeout=90)
    assert len(lab.primaries()) == 1

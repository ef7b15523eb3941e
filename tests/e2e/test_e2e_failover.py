"""A three-host cluster of real MariaDB, real etcd (or the Consul stand-in) and three agents.

Each test drives a real fault and checks what an application and an operator would see.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pymysql
import pytest

from dbfence.breaker.kernel import probe
from dbfence.lab.agents import AgentTuning, log_times
from dbfence.lab.agents import http_status as agent_http_status
from dbfence.lab.cluster import LabCluster
from dbfence.lab.wait import WaitTimeout, wait_until
from dbfence.locks.factory import DcsConfig, open_lock
from dbfence.locks.model import Intent
from dbfence.ops_cli import status_json
from tests.conftest import LabFactory
from tests.e2e.e2e_helpers import (
    app_connect,
    discover,
    only_primary,
    resolve,
    role,
    rows_on,
    status,
    wait_for_role,
    write_row,
    write_until_acknowledged,
)
from tests.mysql.mysql_lab_helpers import actions as mysql_actions

pytestmark = pytest.mark.timeout(240)


def agents_http(lab: LabCluster, name: str, path: str) -> tuple[int, bytes]:
    return agent_http_status(lab.agent(name), path)


def gate_address(lab: LabCluster, name: str) -> str:
    return lab.agent(name).address


@pytest.mark.parametrize("dcs", ["etcd", "consul"])
def test_crashed_primary_fails_over_and_comes_back_as_a_replica(lab_factory: LabFactory, dcs: str) -> None:
    lab = lab_factory(mysql_count=3, dcs=dcs, agents=True)
    old = only_primary(lab)
    assert discover(lab)[0] == gate_address(lab, old)
    assert write_row(lab, 1) == gate_address(lab, old)

    lab.kill_mysql(old)
    host, seconds, _ = write_until_acknowledged(lab, 100, timeout=30)
    new = only_primary(lab)
    assert new != old and host == gate_address(lab, new)
    if dcs == "consul":
        assert resolve(lab, f"primary.{lab.cluster}.service.consul") == [gate_address(lab, new)]
    other = next(n.name for n in lab.mysql if n.name not in (old, new))
    wait_until(lambda: role(lab, other) == "replica"
               and status(lab, other)["database"]["replication_source"] == new,
               timeout=20, what=f"{other} to follow {new}")
    assert role(lab, old) == "fenced"
    print(f"\n[{dcs}] kill -9 of {old}'s mysqld -> first acknowledged write on {new}: {seconds:.2f}s")

    lab.start_mysql(old)
    wait_for_role(lab, old, "replica", timeout=30)  # rejoins
    assert only_primary(lab) == new
    rows = {1} | {r for r in rows_on(lab, new) if r >= 100}
    wait_until(lambda: rows <= rows_on(lab, old), timeout=20, what=f"{old} to catch up")
    assert lab.node(old).process.alive()


def test_a_hung_primary_mysqld_is_handed_over_without_waiting_on_it(lab_factory: LabFactory) -> None:
    """SIGSTOP of the primary's mysqld: the fence cannot ask it for read-only (it would wait for a
    connect timeout per attempt), so the agent releases as soon as the gate is closed and asks
    again afterwards; it used to hold the lock 2-6 s longer."""
    lab = lab_factory(mysql_count=3, dcs="etcd", agents=True)
    old = only_primary(lab)
    write_row(lab, 1)
    lab.kill_mysql(old, signal.SIGSTOP)
    try:
        _, seconds, _ = write_until_acknowledged(lab, 300, timeout=30)
        assert only_primary(lab) != old
    finally:
        lab.kill_mysql(old, signal.SIGCONT)
    log = lab.agent(old).log
    fenced_at = log_times(log, 0.0, '"event": "role"', '"to": "fencing"')[0]
    released_at = log_times(log, 0.0, '"action": "ReleaseLock"', '"ok": true')[0]
    held = released_at - fenced_at
    print(f"\nSIGSTOP of {old}'s mysqld -> lock released {held:.2f}s after fencing began, "
          f"first write on the new primary after {seconds:.2f}s")
    assert held < 1.0, f"the lock was held {held:.2f}s after fencing began"


def test_a_fresh_cluster_settles_without_touching_replication(lab_factory: LabFactory) -> None:
    """Agents starting on a replicating cluster leave replication alone: an agent that acted on
    its first facts, read before the DCS named its source, detached and repointed its replica,
    which then acknowledged no lossless commit for a second or two."""
    lab = lab_factory(mysql_count=3, dcs="etcd", agents=True)
    primary = only_primary(lab)
    replicas = [n.name for n in lab.mysql if n.name != primary]
    def following(name: str) -> bool:
        return role(lab, name) == "replica" and status(lab, name)["database"]["replication_source"] == primary

    wait_until(lambda: all(following(name) for name in replicas), timeout=20,
               what=f"the replicas to follow {primary}")
    for name in replicas:
        log = Path(lab.agent(name).log).read_text(errors="replace")
        touched = [line for line in log.splitlines()
                   if '"action": "DetachSource"' in line or '"action": "Repoint"' in line]
        assert not touched, "\n".join(touched)


def test_the_primary_status_shows_its_gate_connections_and_where_they_are_forwarded(
    lab_factory: LabFactory,
) -> None:
    # kernel_forwarding = "auto" (the default): used where the host allows it.
    lab = lab_factory(mysql_count=2, dcs="etcd", etcd_members=1, agents=True,
                      agent_tuning=AgentTuning(kernel_forwarding="auto"))
    primary = only_primary(lab)
    kernel = probe() is None
    host, port = discover(lab)
    with app_connect(lab, host, port) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        gate: dict[str, Any] = {}

        def listed() -> bool:
            nonlocal gate
            gate = status(lab, primary)["gate"]
            return any(row["queries"] >= 1 for row in gate["connections"])

        wait_until(listed, timeout=10, what="the app's connection in the primary's /status")
    if kernel:
        assert gate["kernel_forwarding"] == "on"
    else:
        assert gate["kernel_forwarding"].startswith("off: ")
    [row] = [row for row in gate["connections"] if row["queries"] >= 1]
    assert row["forwarding"] == ("kernel" if kernel else "worker")
    assert row["bytes_in"] > 0 and row["bytes_out"] > 0


def test_killed_agent_takes_its_gate_down_and_the_lease_moves(lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=3, dcs="etcd", agents=True)
    old = only_primary(lab)
    agent = lab.agent(old)
    gate_pids = [p.pid for p in psutil.Process(agent.pid).children(recursive=True)]
    assert gate_pids, "the gate workers run as children of the agent"
    lab.kill_agent(old)
    # The workers die with the agent (parent-death signal): nothing is left admitting there.
    wait_until(lambda: not any(psutil.pid_exists(p) for p in gate_pids), timeout=10,
               what="the gate workers to die with their agent")
    _, seconds, _ = write_until_acknowledged(lab, 200, timeout=30)
    new = only_primary(lab)
    assert new != old
    tuning = lab.extra["agent_tuning"]
    print(f"\nagent kill -9 -> write acknowledged on {new} after {seconds:.2f}s (ttl {tuning['ttl']}s)")
    assert seconds < tuning["ttl"] + 10


def test_primary_that_loses_the_dcs_fences_before_its_deadline(lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=2, dcs="etcd", etcd_members=1, agents=True)
    only_primary(lab)
    tuning = lab.extra["agent_tuning"]
    host, port = discover(lab)

    def gate_admits() -> bool:
        try:
            conn = app_connect(lab, host, port, timeout=2)
        except pymysql.err.OperationalError as exc:
            assert "this node is not the primary" in str(exc), exc
            return False
        with conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        return True

    assert gate_admits()
    lab.kill_etcd("etcd1", signal.SIGSTOP)  # a DCS that stops answering, the hardest case
    stopped_at = time.monotonic()
    try:
        refused_at = wait_until(lambda: None if gate_admits() else time.monotonic(),
                                timeout=tuning["ttl"] + 5, what="the gate to refuse clients")
        # The last renewal was sent before the DCS froze, so the gate's deadline is at most
        # ttl - margin after the freeze; the server-side lease outlives it by the margin at least.
        blocked_after = refused_at - stopped_at
        assert blocked_after <= tuning["ttl"] - tuning["margin"] + 0.3, blocked_after
        print(f"\nDCS frozen -> gate refused clients after {blocked_after:.2f}s "
              f"(ttl {tuning['ttl']}s, margin {tuning['margin']}s)")
    finally:
        lab.kill_etcd("etcd1", signal.SIGCONT)
    wait_until(lambda: len(lab.primaries()) == 1, timeout=30, what="a primary again once etcd answers")


def test_garbage_in_the_lock_key_is_reported_and_survived(lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=2, dcs="etcd", etcd_members=1, agents=True)
    primary = only_primary(lab)
    operator = open_lock(DcsConfig(kind="etcd", endpoints=tuple(lab.dcs_endpoints)), lab.cluster, "operator")
    try:
        import pyetcd  # noqa: PLC0415

        host, port = lab.dcs_endpoints[0].removeprefix("http://").rsplit(":", 1)
        raw = pyetcd.client(host=host, port=int(port))
        raw.put(f"dbfence/{lab.cluster}/leader", b"\x00not json")
        raw.put(f"dbfence/{lab.cluster}/members/ghost", b"{broken")
        # The key is no longer bound to the primary's lease: it must fence, and nobody may admit.
        wait_until(lambda: lab.primaries() == [], timeout=10, what="the primary to fence")
        assert all(lab.agent(a.name).process.alive() for a in lab.agents)
        # The two puts are separate revisions: the agent may fence on the first before it has
        # read the second, so wait for its report to name both.
        def report_naming_ghost() -> dict[str, Any] | None:
            report = status(lab, primary)
            return report if any("members/ghost" in p for p in report["dcs_problems"]) else None

        report = wait_until(report_naming_ghost, timeout=5, what="the agent to report the broken member key")
        assert any("leader" in p for p in report["dcs_problems"]), report["dcs_problems"]
        assert report["lock"]["holder"] == "<unreadable>"
        # The operator clears the key; the cluster elects a primary again.
        operator.force_delete_lock()
        raw.delete(f"dbfence/{lab.cluster}/members/ghost")
        raw.close()
        wait_until(lambda: len(lab.primaries()) == 1, timeout=30, what="a new primary after the force-delete")
    finally:
        operator.close()


def test_primary_whose_mysqld_restarts_at_once_still_hands_over(lab_factory: LabFactory) -> None:
    """A mysqld restarted (say by systemd) faster than the probes can trip is still a crashed
    primary: its crash recovery may have rolled back what a replica already has. It must hand
    over, and come back as a clean replica (no heartbeat written through read_only).

    Unless the kill caught a heartbeat between the binlog write and the replicas' ack (lossless
    mode, AFTER_SYNC): crash recovery then commits it, the old primary holds a transaction no
    other node has, and it must stay fenced naming it (seen once in ~40 runs: GTID 0-1-98 in the
    old binlog, the others at 0-1-97). Either outcome is checked; a rejoin with errant GTIDs is
    never acceptable."""
    lab = lab_factory(mysql_count=3, dcs="etcd", agents=True)
    old = only_primary(lab)
    lab.kill_mysql(old)
    wait_until(lambda: not lab.node(old).process.alive(), timeout=10, what="mysqld to die")
    lab.start_mysql(old)
    new = wait_until(lambda: next((p for p in lab.primaries() if p != old), None), timeout=30,
                     what="another node to become primary")

    def settled() -> dict[str, Any] | None:
        report = status(lab, old)
        if report.get("role") == "replica" or report.get("fenced_reason") == "errant_gtids":
            return report
        return None

    try:
        report = wait_until(settled, timeout=30, what=f"{old} to rejoin (or stay fenced, errant)")
    except WaitTimeout:
        wait_for_role(lab, old, "replica", timeout=0.1)  # fails with the agent's status and log
        raise
    errant = report["database"]["errant"]
    if report["role"] == "replica":
        assert errant == [], report  # the check that allowed the rejoin is in the same report
    else:
        own = f"0-{lab.node(old).server_id}-"
        assert errant and all(gtid.startswith(own) for gtid in errant), report
        print(f"\n{old} stays fenced: the kill caught its own write in flight ({errant})")
    assert only_primary(lab) == new


def test_sigterm_of_the_primary_agent_logs_each_stop_step_and_hands_the_lock_over(
        lab_factory: LabFactory) -> None:
    """``systemctl stop dbfence`` on the primary: the agent fences (gate, read-only), releases the
    lock and says so, step by step with how long each took, like every other action."""
    lab = lab_factory(mysql_count=2, dcs="etcd", agents=True)
    old = only_primary(lab)
    since = time.time() - 1
    operator = open_lock(DcsConfig(kind="etcd", endpoints=tuple(lab.dcs_endpoints)), lab.cluster, "operator")
    lab.kill_agent(old, signal.SIGTERM)
    stopped_at = time.monotonic()
    wait_until(lambda: not lab.agent(old).process.alive(), timeout=30, what="the agent to exit")
    # Its record outlives it until its lease expires: agents restarted with it still see what it
    # holds (LeaseLock.leave), and then it goes by itself.
    kept = operator.snapshot().member(old)
    assert kept is not None and kept.role == "primary"
    new = wait_until(lambda: next(iter(lab.primaries()), None), timeout=30, what="a new primary")
    took_over = time.monotonic() - stopped_at
    wait_until(lambda: operator.snapshot().member(old) is None, timeout=30, what=f"{old}'s record to expire")
    operator.close()
    assert new != old
    lines = [json.loads(line.split(" dbfence.agent ", 1)[1]) for line in
             Path(lab.agent(old).log).read_text().splitlines() if " dbfence.agent {" in line]
    stop = next(i for i, entry in enumerate(lines) if entry.get("event") == "stopping")
    steps = lines[stop:]
    assert steps[0]["role"] == "primary" and steps[0]["token"] is not None
    actions = [(e["action"], e["reason"], e["ok"]) for e in steps if e.get("event") == "action"]
    assert actions == [("BlockGate", "agent_stopping", True), ("SetReadOnly", "agent_stopping", True),
                       ("ReleaseLock", "agent_stopping", True)], steps
    assert all(e["ms"] >= 0 and e["token"] == steps[0]["token"] for e in steps if e.get("event") == "action")
    assert steps[-1]["event"] == "stopped" and steps[-1]["lock_released"] is True
    timings = ", ".join(f"{e['action']} {e['ms']} ms" for e in steps if e.get("event") == "action")
    print(f"\nSIGTERM of {old}'s agent: {timings}; stopped after {steps[-1]['ms']} ms; "
          f"{new} admitted {took_over:.2f}s after the signal")
    assert log_times(lab.agent(old).log, since, '"event": "stopped"')


def test_a_replica_with_its_io_thread_stopped_reports_no_lag_and_is_no_replica(
        lab_factory: LabFactory) -> None:
    """Its applier has nothing left to apply, but how far behind its source it is cannot be
    known: /status, the member record (``dbfence status``) and /metrics must not say 0, and
    /replica must not send reads to it. The cluster is paused so the agent leaves the thread
    stopped (it would otherwise restart it within a round)."""
    lab = lab_factory(mysql_count=2, dcs="etcd", etcd_members=1, agents=True)
    primary = only_primary(lab)
    replica = next(a.name for a in lab.agents if a.name != primary)
    wait_until(lambda: agents_http(lab, replica, "/replica")[0] == 200, timeout=30, what="a working replica")
    # ... whose every probe has passed once: until then a replica is not healthy (it may not race),
    # and a report taken 0.1 s after the agent started said so (a failure once under load).
    wait_until(lambda: status(lab, replica)["database"]["healthy"], timeout=30, what="a confirmed replica")
    operator = open_lock(DcsConfig(kind="etcd", endpoints=tuple(lab.dcs_endpoints)), lab.cluster, "operator")
    try:
        operator.write_intent(Intent(paused=True, pause_reason="test"))
        wait_until(lambda: status(lab, replica)["intent"]["paused"], timeout=10, what="the pause")
        assert mysql_actions(lab, replica).stop_receiving()

        def stopped_report() -> dict[str, Any] | None:
            report = status(lab, replica)
            problem = report.get("database", {}).get("replication_problem") or ""
            return report if problem.startswith("io_thread_not_running") else None

        report = wait_until(stopped_report, timeout=10, what="the status to name the stopped IO thread")
        assert report["database"]["lag_seconds"] is None and report["lag_seconds"] is None
        assert report["database"]["healthy"] is True  # the database is fine: it can still be promoted
        assert agents_http(lab, replica, "/replica")[0] == 503
        metrics = agents_http(lab, replica, "/metrics")[1].decode()
        assert "dbfence_replication_running 0" in metrics and "dbfence_replication_lag_seconds NaN" in metrics
        wait_until(lambda: next(m for m in status_json(operator.snapshot(strict=False))["members"]
                                if m["node"] == replica)["lag_seconds"] is None,
                   timeout=10, what="the member record to carry no lag")
        operator.write_intent(Intent())
        wait_until(lambda: agents_http(lab, replica, "/replica")[0] == 200, timeout=30,
                   what="the agent to restart the IO thread once resumed")
        assert status(lab, replica)["database"]["lag_seconds"] is not None
    finally:
        operator.close()

"""Helpers for end-to-end tests: an application that finds the primary the way real ones do."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pymysql

from dbfence.discovery import NoPrimary, primary_address
from dbfence.lab.agents import http_status
from dbfence.lab.cluster import LabCluster
from dbfence.lab.wait import WaitTimeout, wait_until
from dbfence.locks.factory import DcsConfig, open_lock
from dbfence.locks.model import Intent
from tests.mysql.mysql_lab_helpers import actions as mysql_actions


def discover(lab: LabCluster) -> tuple[str, int]:
    """The primary's gate as an application sees it: the etcd key, or Consul DNS."""
    if lab.dcs_kind == "etcd":
        return primary_address(lab.cluster, etcd=lab.dcs_endpoints)
    addresses = resolve(lab, f"primary.{lab.cluster}.service.consul")
    if len(addresses) != 1:
        raise NoPrimary(f"DNS names {addresses}")
    return addresses[0], lab.agents[0].gate_port


def resolve(lab: LabCluster, name: str) -> list[str]:
    assert lab.consul is not None
    host, port = lab.consul.dns_address.rsplit(":", 1)
    answer = dns.query.udp(dns.message.make_query(name, "A"), host, port=int(port), timeout=2)
    if answer.rcode() == dns.rcode.NXDOMAIN:
        return []
    return sorted(item.address for rrset in answer.answer for item in rrset)


def app_connect(lab: LabCluster, host: str, port: int, timeout: float = 5.0) -> Any:
    app = lab.accounts["app"]
    return pymysql.connect(host=host, port=port, user=app.user, password=app.password, autocommit=True,
                           connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout,
                           ssl_disabled=True)


def write_row(lab: LabCluster, row_id: int) -> str:
    """Insert one row through discovery and the gate; return the gate address that took it."""
    host, port = discover(lab)
    conn = app_connect(lab, host, port)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS app.e2e (id INT PRIMARY KEY)")
        cur.execute("INSERT INTO app.e2e VALUES (%s)", (row_id,))
    return host


def write_until_acknowledged(lab: LabCluster, first_id: int, timeout: float) -> tuple[str, float, int]:
    """Keep trying new rows until one is acknowledged; (gate host, seconds, attempts)."""
    started = time.monotonic()
    attempts = 0
    last_error = ""
    while time.monotonic() - started < timeout:
        attempts += 1
        try:
            host = write_row(lab, first_id + attempts)
            return host, time.monotonic() - started, attempts
        except (pymysql.MySQLError, NoPrimary, OSError) as exc:
            last_error = str(exc)
        time.sleep(0.05)
    raise AssertionError(f"no write acknowledged within {timeout}s; last error: {last_error}")


def kill_primary_and_time_first_write(lab: LabCluster, old: str, first_id: int,
                                      timeout: float = 60) -> tuple[float, float, int]:
    """kill -9 ``old``'s mysqld, then write until a row is acknowledged (through discovery and the
    new primary's gate): (seconds from the kill to that acknowledgement, seconds the writer took,
    the acknowledged row's id). The first is the RTO the soak measures."""
    lab.kill_mysql(old)
    killed = time.monotonic()
    _, took, attempts = write_until_acknowledged(lab, first_id, timeout=timeout)
    return time.monotonic() - killed, took, first_id + attempts


def log_events(lab: LabCluster, name: str, event: str) -> list[str]:
    """The lines of ``name``'s agent log that report ``event`` (its JSON ``"event"`` field)."""
    log = Path(lab.agent(name).log).read_text(errors="replace")
    return [line for line in log.splitlines() if f'"{event}"' in line]


def semi_sync_clients(lab: LabCluster, name: str) -> int:
    """Replicas connected to ``name`` that acknowledge its commits (``Rpl_semi_sync_master_clients``)."""
    with lab.connect(name) as conn, conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_clients'")
        row = cur.fetchone()
    return int(row[1]) if row else 0


def status(lab: LabCluster, name: str) -> dict[str, Any]:
    return lab.agent_status(name)


def role(lab: LabCluster, name: str) -> str | None:
    value = status(lab, name).get("role")
    return None if value is None else str(value)


def wait_for_role(lab: LabCluster, name: str, wanted: str, timeout: float) -> None:
    """Poll ``name``'s agent until it reports ``wanted``; on timeout fail with its last status
    (refusals, database probes, action errors) and the tail of its log, which say why."""
    wait_for_status(lab, name, lambda report: report.get("role") == wanted, timeout=timeout,
                    what=f"{name} to become {wanted}")


def wait_for_status(lab: LabCluster, name: str, wanted: Callable[[dict[str, Any]], bool], *,
                    timeout: float, what: str) -> None:
    """Poll ``name``'s agent until its status satisfies ``wanted``; on timeout fail as
    :func:`wait_for_role` does."""
    last: dict[str, Any] = {}

    def reached() -> bool:
        nonlocal last
        last = status(lab, name)
        return wanted(last)
    try:
        wait_until(reached, timeout=timeout, what=what)
    except WaitTimeout as exc:
        tail = Path(lab.agent(name).log).read_text(errors="replace").splitlines()[-15:]
        raise AssertionError("\n".join([str(exc), json.dumps(last, indent=1, default=str), *tail])) from exc


def rows_on(lab: LabCluster, node: str) -> set[int]:
    with lab.connect(node) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM app.e2e")
        return {int(row[0]) for row in cur.fetchall()}


def only_primary(lab: LabCluster) -> str:
    primaries = lab.primaries()
    assert len(primaries) == 1, f"expected exactly one admitting primary, got {primaries}"
    return primaries[0]


def settled_two_nodes(lab: LabCluster) -> tuple[str, str]:
    """The primary and its replica once it follows, after one acknowledged write."""
    primary = only_primary(lab)
    replica = next(n.name for n in lab.mysql if n.name != primary)
    wait_for_role(lab, replica, "replica", timeout=60)
    write_row(lab, 1)
    return primary, replica


def settled_three_nodes(lab: LabCluster) -> tuple[str, str, str]:
    """The primary and its two replicas (sorted by name) once both follow it, after one
    acknowledged write."""
    primary = only_primary(lab)
    first, second = sorted(n.name for n in lab.mysql if n.name != primary)
    for name in (first, second):
        wait_for_role(lab, name, "replica", timeout=60)
    write_row(lab, 1)
    return primary, first, second


def hang_the_primary_after(lab: LabCluster, commit_only_there: Callable[[str], object],
                           before_resume: Callable[[str], object] = lambda old: None) -> tuple[str, str]:
    """Make the primary end with a commit that no replica has, hang it (SIGSTOP) until another node
    takes over and acknowledges writes, then resume it (SIGCONT); return (old primary, new primary).

    ``commit_only_there(old)`` makes that commit: an acknowledged asynchronous write, or a wait
    until a commit waits for its semi-sync ack. It runs while the agents are paused and the
    replicas have stopped receiving: paused, the replicas' agents leave their IO threads stopped
    (they would restart them within a round), so the commit reaches the old primary only. The
    pause ends once its mysqld is stopped. ``before_resume(old)`` runs just before the SIGCONT.
    """
    old = only_primary(lab)
    write_row(lab, 1)
    replicas = [n.name for n in lab.mysql if n.name != old]
    wait_until(lambda: all(http_status(lab.agent(n), "/replica")[0] == 200 for n in replicas),
               timeout=60, what="the replicas to replicate")
    operator = open_lock(DcsConfig(kind=lab.dcs_kind, endpoints=tuple(lab.dcs_endpoints)), lab.cluster,
                         "operator")
    try:
        operator.write_intent(Intent(paused=True, pause_reason="test"))
        wait_until(lambda: all(status(lab, n)["intent"]["paused"] for n in (old, *replicas)), timeout=10,
                   what="every agent to see the pause")
        for name in replicas:
            assert mysql_actions(lab, name).stop_receiving()
        commit_only_there(old)
        lab.kill_mysql(old, signal.SIGSTOP)
        operator.write_intent(Intent())
    finally:
        operator.close()
    write_until_acknowledged(lab, 100, timeout=60)
    new = only_primary(lab)
    assert new != old
    before_resume(old)
    lab.kill_mysql(old, signal.SIGCONT)
    return old, new


def assert_follows(lab: LabCluster, old: str, new: str) -> None:
    """``old`` replicates ``new``: a new write reaches it, and it has exactly ``new``'s rows."""
    write_row(lab, 1000)
    deadline = time.monotonic() + 30
    while rows_on(lab, old) != rows_on(lab, new) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rows_on(lab, old) == rows_on(lab, new)
    assert not status(lab, old)["database"]["errant"]

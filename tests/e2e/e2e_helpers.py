"""Helpers for end-to-end tests: an application that finds the primary the way real ones do."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pymysql

from dbfence.discovery import NoPrimary, primary_address
from dbfence.lab.cluster import LabCluster
from dbfence.lab.wait import WaitTimeout, wait_until


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


def status(lab: LabCluster, name: str) -> dict[str, Any]:
    return lab.agent_status(name)


def role(lab: LabCluster, name: str) -> str | None:
    value = status(lab, name).get("role")
    return None if value is None else str(value)


def wait_for_role(lab: LabCluster, name: str, wanted: str, timeout: float) -> None:
    """Poll ``name``'s agent until it reports ``wanted``; on timeout fail with its last status
    (refusals, database probes, action errors) and the tail of its log, which say why."""
    last: dict[str, Any] = {}

    def reached() -> bool:
        nonlocal last
        last = status(lab, name)
        return last.get("role") == wanted
    try:
        wait_until(reached, timeout=timeout, what=f"{name} to become {wanted}")
    except WaitTimeout as exc:
        tail = Path(lab.agent(name).log).read_text(errors="replace").splitlines()[-15:]
        raise AssertionError("\n".join([str(exc), json.dumps(last, indent=1, default=str), *tail])) from exc


def rows_on(lab: LabCluster, node: str) -> set[int]:
    with lab.connect(node) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM app.e2e")
        return {int(row[0]) for row in cur.fetchall()}

"""Helpers for the gate tests: clients through the gate, and asking mysqld directly."""

from __future__ import annotations

from typing import Any

import pymysql

from dbfence.breaker.gate import Gate
from dbfence.lab.cluster import LabCluster


def connect_via(gate: Gate, lab: LabCluster, **kwargs: Any) -> pymysql.connections.Connection[Any]:
    account = lab.accounts["agent"]
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": gate.port,
        "user": account.user,
        "password": account.password,
        "autocommit": True,
        "connect_timeout": 5,
        "read_timeout": 10,
        "write_timeout": 10,
        "ssl_disabled": True,  # loopback: skip PyMySQL's per-connection TLS context
    }
    options.update(kwargs)
    return pymysql.connect(**options)


def mark_landed(lab: LabCluster, mark: str) -> bool:
    """Ask mysqld directly (not through the gate) whether a row reached it."""
    with lab.connect("db1") as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM gate_t.marks WHERE mark = %s", (mark,))
        row = cur.fetchone()
        assert row is not None
        return int(row[0]) == 1

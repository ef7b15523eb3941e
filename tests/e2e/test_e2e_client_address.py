"""An application in its own network namespace, through a running agent's gate with gate.proxy_protocol:
mysqld authenticates it by its own address and shows that address in its processlist.

The agent's gate connects to mysqld from 127.0.0.2 (gate.backend_source), the one address mysqld's
proxy_protocol_networks lists; the account exists only for the client namespace's address. The
client is on another host, so its link stays on the worker path (the kernel joins only clients of
the gate's own host: tests/breaker/test_gate_client_address.py covers that path).
"""

from __future__ import annotations

import secrets
from typing import Any

import pymysql
import pytest

from dbfence.lab import netns
from dbfence.lab.agents import AgentTuning
from dbfence.lab.wait import wait_until
from tests.conftest import LabFactory
from tests.e2e.e2e_helpers import status, wait_for_role

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(netns.unavailable_reason() is not None,
                       reason=f"network namespaces unavailable: {netns.unavailable_reason()}"),
]

GATE_SOURCE = "127.0.0.2"
USER = "dbf_from_client_ns"


def test_proxy_protocol_shows_the_client_namespace_address_to_mysqld(lab_factory: LabFactory) -> None:
    tuning = AgentTuning(lossless=False, proxy_protocol=True, backend_source=GATE_SOURCE)
    lab = lab_factory(mysql_count=1, netns=True, agents=False)
    layout = lab.netns
    assert layout is not None
    client_address = layout.address(netns.CLIENT)
    password = secrets.token_hex(8)
    # Before the agent starts: it refuses to, unless mysqld takes the header from the gate.
    with lab.connect("db1") as conn, conn.cursor() as cur:
        cur.execute("SET SESSION sql_log_bin = 0")  # a write of its own would keep it from racing
        cur.execute(f"CREATE USER '{USER}'@'{client_address}' IDENTIFIED BY %s", (password,))
        cur.execute(f"SET GLOBAL proxy_protocol_networks = '{GATE_SOURCE}/32'")
    lab.start_agents(tuning)
    wait_for_role(lab, "db1", "primary", timeout=60)
    wait_until(lambda: status(lab, "db1").get("gate", {}).get("admitting") is True, timeout=30,
               what="db1's gate to admit")
    agent = lab.agent("db1")

    def through_the_gate() -> tuple[Any, ...]:
        with pymysql.connect(host=agent.address, port=agent.gate_port, user=USER, password=password,
                             connect_timeout=5, read_timeout=10, ssl_disabled=True) as conn:
            local_port = conn._sock.getsockname()[1]  # type: ignore[attr-defined]  # PyMySQL's socket
            with conn.cursor() as cur:
                cur.execute("SELECT USER(), CONNECTION_ID()")
                user, own_id = cur.fetchone() or ("", 0)
                cur.execute("SHOW PROCESSLIST")
                hosts = [row[2] for row in cur.fetchall() if row[0] == own_id]
            return user, hosts, local_port

    user, hosts, local_port = lab.in_client(through_the_gate)
    assert user == f"{USER}@{client_address}"
    assert hosts == [f"{client_address}:{local_port}"]

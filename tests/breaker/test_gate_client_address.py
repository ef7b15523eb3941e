"""What mysqld sees as a gate client's address, with and without the PROXY protocol, on both paths.

The client binds 127.0.0.5 (a loopback address of its own), the gate's backend connections come from
127.0.0.2, and mysqld's ``proxy_protocol_networks`` lists only 127.0.0.2. The test account exists only
for 127.0.0.5: it can log in through the gate only if mysqld takes the client's address from the header.
On the kernel path the link is joined after its login, so the queries after it (SHOW PROCESSLIST among
them) go socket to socket while mysqld keeps the address the header gave the session.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pymysql
import pytest

from dbfence.breaker.proxy_header import proxy_header
from dbfence.lab.cluster import LabCluster
from dbfence.lab.mariadb_servers import connect
from tests.breaker.conftest import GateFactory
from tests.breaker.gate_helpers import connect_via

CLIENT_ADDRESS = "127.0.0.5"
GATE_SOURCE = "127.0.0.2"  # the only address mysqld takes a header from
UNLISTED_SOURCE = "127.0.0.3"
USER = "dbf_client_addr"
ER_ACCESS_DENIED = 1045
ER_HOST_NOT_PRIVILEGED = 1130
CR_SERVER_LOST = 2013


@pytest.fixture(scope="module")
def client_password(gate_lab: LabCluster) -> Iterator[str]:
    """An account granted only to the client's address, and mysqld told to trust the gate's source."""
    password = secrets.token_hex(8)
    with gate_lab.connect("db1") as conn, conn.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.proxy_protocol_networks")
        row = cur.fetchone()
        assert row is not None
        before = str(row[0])
        cur.execute(f"CREATE USER '{USER}'@'{CLIENT_ADDRESS}' IDENTIFIED BY %s", (password,))
        cur.execute(f"GRANT SELECT ON gate_t.* TO '{USER}'@'{CLIENT_ADDRESS}'")
        cur.execute(f"SET GLOBAL proxy_protocol_networks = '{GATE_SOURCE}/32'")
    try:
        yield password
    finally:
        with gate_lab.connect("db1") as conn, conn.cursor() as cur:
            cur.execute("SET GLOBAL proxy_protocol_networks = %s", (before,))
            cur.execute(f"DROP USER '{USER}'@'{CLIENT_ADDRESS}'")


def _one(conn: pymysql.connections.Connection[Any], sql: str) -> tuple[Any, ...]:
    with conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
    assert row is not None
    return tuple(row)


def _own_processlist_host(conn: pymysql.connections.Connection[Any]) -> str:
    """This session's Host column in SHOW PROCESSLIST, asked over the session itself."""
    (own_id,) = _one(conn, "SELECT CONNECTION_ID()")
    with conn.cursor() as cur:
        cur.execute("SHOW PROCESSLIST")
        hosts = [str(row[2]) for row in cur.fetchall() if int(row[0]) == int(own_id)]
    assert len(hosts) == 1, hosts
    return hosts[0]


def test_with_proxy_protocol_mysqld_authenticates_and_shows_the_client_address(
    make_gate: GateFactory, gate_lab: LabCluster, forwarding: str, client_password: str
) -> None:
    gate = make_gate(proxy_protocol=True, backend_source=GATE_SOURCE)
    gate.admit(time.monotonic() + 60)
    login = {"user": USER, "password": client_password, "bind_address": CLIENT_ADDRESS}
    with connect_via(gate, gate_lab, **login) as conn:
        client_port = conn._sock.getsockname()[1]  # type: ignore[attr-defined]  # PyMySQL keeps its socket here
        assert _one(conn, "SELECT USER(), CURRENT_USER()") == (f"{USER}@{CLIENT_ADDRESS}",) * 2
        assert _own_processlist_host(conn) == f"{CLIENT_ADDRESS}:{client_port}"
        [row] = gate.stats().connections
        assert row.client == f"{CLIENT_ADDRESS}:{client_port}"
        assert row.forwarding == forwarding  # the kernel path: joined, and still the client's address
        # An administrator on mysqld itself sees the same.
        with gate_lab.connect("db1") as admin, admin.cursor() as cur:
            cur.execute("SELECT HOST FROM information_schema.PROCESSLIST WHERE USER = %s", (USER,))
            assert [r[0] for r in cur.fetchall()] == [f"{CLIENT_ADDRESS}:{client_port}"]


def test_without_proxy_protocol_mysqld_sees_the_gate_and_refuses_the_account(
    make_gate: GateFactory, gate_lab: LabCluster, forwarding: str, client_password: str
) -> None:
    gate = make_gate(backend_source=GATE_SOURCE)
    gate.admit(time.monotonic() + 60)
    with pytest.raises(pymysql.err.OperationalError) as refused:
        connect_via(gate, gate_lab, user=USER, password=client_password, bind_address=CLIENT_ADDRESS).close()
    assert refused.value.args[0] == ER_ACCESS_DENIED
    assert f"'{USER}'@'{GATE_SOURCE}'" in refused.value.args[1]
    # An account mysqld does take from the gate's address (the agent's here: it is granted to
    # 127.0.0.1, so this gate's backend source is the kernel's choice for a loopback mysqld).
    plain = make_gate()
    plain.admit(time.monotonic() + 60)
    with connect_via(plain, gate_lab, bind_address=CLIENT_ADDRESS) as conn:
        host = _own_processlist_host(conn)
        assert host.startswith("127.0.0.1:"), host
        [row] = plain.stats().connections
        assert row.client.startswith(f"{CLIENT_ADDRESS}:") and row.forwarding == forwarding


def test_over_the_unix_socket_mysqld_takes_the_header_if_it_lists_localhost(
    make_gate: GateFactory, gate_lab: LabCluster, client_password: str
) -> None:
    node = gate_lab.mysql[0]
    gate = make_gate(proxy_protocol=True, backend_socket=node.socket, kernel_forwarding="auto")
    gate.admit(time.monotonic() + 60)
    login = {"user": USER, "password": client_password, "bind_address": CLIENT_ADDRESS}
    with gate_lab.connect("db1") as admin, admin.cursor() as cur:
        cur.execute("SET GLOBAL proxy_protocol_networks = 'localhost'")
        try:
            with connect_via(gate, gate_lab, **login) as conn:
                client_port = conn._sock.getsockname()[1]  # type: ignore[attr-defined]  # PyMySQL's socket
                assert _own_processlist_host(conn) == f"{CLIENT_ADDRESS}:{client_port}"
        finally:
            cur.execute(f"SET GLOBAL proxy_protocol_networks = '{GATE_SOURCE}/32'")


def test_a_header_from_an_address_mysqld_does_not_list_loses_the_connection(
    make_gate: GateFactory, gate_lab: LabCluster, client_password: str
) -> None:
    gate = make_gate(proxy_protocol=True, backend_source=UNLISTED_SOURCE)
    gate.admit(time.monotonic() + 60)
    with pytest.raises(pymysql.err.OperationalError) as refused:
        connect_via(gate, gate_lab, user=USER, password=client_password, bind_address=CLIENT_ADDRESS).close()
    # No account is granted to that address, so mysqld refuses it before reading anything (with an
    # account for it, mysqld would take the connection, read the header and drop it: connection lost).
    assert refused.value.args[0] == ER_HOST_NOT_PRIVILEGED, refused.value.args
    assert f"'{UNLISTED_SOURCE}'" in refused.value.args[1]


def test_a_listed_address_may_still_connect_without_a_header(gate_lab: LabCluster) -> None:
    """Why listing the gate's backend address cannot lock out the agent's own sessions, monitoring or
    replication from that address: mysqld takes a header from it but does not require one."""
    node = gate_lab.mysql[0]
    with gate_lab.connect("db1") as conn, conn.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.proxy_protocol_networks")
        row = cur.fetchone()
        assert row is not None
        before = str(row[0])
        cur.execute("SET GLOBAL proxy_protocol_networks = '127.0.0.1/32'")
        try:
            with connect(node, gate_lab.accounts["agent"], bind_address="127.0.0.1") as direct:
                assert _own_processlist_host(direct).startswith("127.0.0.1:")
        finally:
            cur.execute("SET GLOBAL proxy_protocol_networks = %s", (before,))


CLAIMED_ADDRESS = "127.0.0.9"  # what a spoofing client claims to be


@pytest.fixture(scope="module")
def claimed_account(gate_lab: LabCluster, client_password: str) -> Iterator[str]:
    """An account granted only to an address the spoofing client is not at."""
    with gate_lab.connect("db1") as conn, conn.cursor() as cur:
        cur.execute(f"CREATE USER '{USER}'@'{CLAIMED_ADDRESS}' IDENTIFIED BY %s", (client_password,))
    try:
        yield client_password
    finally:
        with gate_lab.connect("db1") as conn, conn.cursor() as cur:
            cur.execute(f"DROP USER '{USER}'@'{CLAIMED_ADDRESS}'")


def _header_first(conn: pymysql.connections.Connection[Any], header: bytes) -> None:
    """Make the client put ``header`` (a PROXY header of its own) in front of its handshake response."""
    write: Callable[[bytes], None] = conn._write_bytes  # type: ignore[attr-defined]  # not in the stubs
    pending = [header]

    def prefixed(data: bytes) -> None:
        write((pending.pop() if pending else b"") + data)

    conn._write_bytes = prefixed  # type: ignore[attr-defined]


def _login_claiming(port: int, password: str, claimed: str, *, bind: str) -> str:
    conn = pymysql.connect(host="127.0.0.1", port=port, user=USER, password=password, bind_address=bind,
                           defer_connect=True, ssl_disabled=True, connect_timeout=5, read_timeout=10)
    _header_first(conn, proxy_header((claimed, 4242), ("127.0.0.1", port)))
    conn.connect()
    with conn:
        return str(_one(conn, "SELECT USER()")[0])


def test_mysqld_would_take_a_header_the_client_sends_after_the_gate_s(
    gate_lab: LabCluster, claimed_account: str
) -> None:
    """Why the gate must stop them: straight from the gate's listed address, a second header wins."""
    node = gate_lab.mysql[0]
    with socket.socket() as sock:
        sock.bind((GATE_SOURCE, 0))
        sock.connect((node.host, node.port))
        sock.sendall(proxy_header((CLIENT_ADDRESS, 4141), ("127.0.0.1", 3307)))
        conn = pymysql.connect(user=USER, password=claimed_account, defer_connect=True, ssl_disabled=True)
        _header_first(conn, proxy_header((CLAIMED_ADDRESS, 4242), ("127.0.0.1", 3307)))
        conn.connect(sock=sock)
        with conn:
            assert _one(conn, "SELECT USER()") == (f"{USER}@{CLAIMED_ADDRESS}",)


@pytest.mark.parametrize("proxy_protocol", [True, False])
def test_a_client_that_sends_its_own_proxy_header_is_cut(
    make_gate: GateFactory, gate_lab: LabCluster, claimed_account: str, proxy_protocol: bool
) -> None:
    # Without proxy_protocol the gate's backend address is still listed here: a client's header
    # would be the first one mysqld reads, and be believed.
    gate = make_gate(proxy_protocol=proxy_protocol, backend_source=GATE_SOURCE)
    gate.admit(time.monotonic() + 60)
    with pytest.raises(pymysql.err.OperationalError) as cut:
        _login_claiming(gate.port, claimed_account, CLAIMED_ADDRESS, bind=CLIENT_ADDRESS)
    assert cut.value.args[0] == CR_SERVER_LOST, cut.value.args
    assert gate.stats().spoofed_headers == 1

"""The gate protects mysqld from a connection flood: a backend cap shared by every worker, ERR 1040
beyond it with no backend connection opened, and a login timeout for clients that say nothing.

Real MariaDB, real sockets on loopback. mysqld's own view (``Threads_connected``, read over its
``extra_port``, whose connections it does not count there) is the judge, not the gate's counters.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
import time
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from dbfence.breaker.config import GateConfig
from dbfence.breaker.packets import ER_CON_COUNT_ERROR
from dbfence.breaker.shared import SharedRecord
from dbfence.lab.cluster import LabCluster
from tests.breaker.conftest import GateFactory
from tests.breaker.gate_helpers import connect_via
from tests.breaker.waiting import wait_past, wait_until

FLOOD = 300  # bare TCP connections: well past mysqld's limit in these tests, few enough for CI


@contextlib.contextmanager
def monitor_connection(lab: LabCluster) -> Iterator[pymysql.connections.Connection[Any]]:
    """A connection on mysqld's extra_port: it gets in whatever the flood does, and is not
    counted in Threads_connected."""
    node, account = lab.mysql[0], lab.accounts["agent"]
    conn = pymysql.connect(host=node.host, port=node.extra_port, user=account.user, password=account.password,
                           autocommit=True, connect_timeout=5, read_timeout=10, ssl_disabled=True)
    try:
        yield conn
    finally:
        conn.close()


def scalar(conn: pymysql.connections.Connection[Any], sql: str) -> int:
    with conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def threads_connected(conn: pymysql.connections.Connection[Any]) -> int:
    return scalar(conn, "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
                        "WHERE VARIABLE_NAME = 'THREADS_CONNECTED'")


@contextlib.contextmanager
def mysqld_max_connections(conn: pymysql.connections.Connection[Any], value: int) -> Iterator[None]:
    before = scalar(conn, "SELECT @@global.max_connections")
    with conn.cursor() as cur:
        cur.execute(f"SET GLOBAL max_connections = {int(value)}")
    try:
        yield
    finally:
        with conn.cursor() as cur:
            cur.execute(f"SET GLOBAL max_connections = {int(before)}")


def open_bare(port: int, count: int) -> list[socket.socket]:
    """``count`` TCP connections that send nothing (as fast as the loop goes)."""
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


def test_backend_cap_is_mysqlds_limit_less_the_reserve() -> None:
    derived = GateConfig(reserved_connections=10)
    assert derived.backend_cap(200) == 190
    assert derived.backend_cap(None) == 141  # mysqld's compiled-in 151, until it is read
    assert derived.backend_cap(5) == 0  # a reserve larger than the limit: admit nobody
    bounded = GateConfig(max_connections=50, reserved_connections=10)
    assert bounded.backend_cap(200) == 50
    assert bounded.backend_cap(40) == 30  # never above mysqld's limit less the reserve
    assert bounded.backend_cap(None) == 50


def _grab_slots(fd: int, attempts: int, results: Any) -> None:
    record = SharedRecord(fd)
    taken = sum(1 for _ in range(attempts) if record.take_backend_slot())
    results.put(taken)


def test_processes_racing_for_slots_never_hold_more_than_the_cap() -> None:
    record = SharedRecord.create()
    try:
        record.write_backend_cap(100)
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        racers = [context.Process(target=_grab_slots, args=(record.fd, 400, results)) for _ in range(4)]
        for racer in racers:
            racer.start()
        taken = sum(results.get(timeout=60) for _ in racers)
        for racer in racers:
            racer.join(10)
        # Increment-then-check may refuse a few too many while the racers collide, never admit
        # one too many.
        assert 100 - len(racers) <= taken <= 100
        assert record.backend_slots_held() == taken
        record.release_backend_slot()
        assert record.backend_slots_held() == taken - 1
    finally:
        record.close()


def test_a_flood_of_bare_connections_stays_under_the_cap_and_gets_err_1040(
    make_gate: GateFactory, gate_lab: LabCluster, forwarding: str
) -> None:
    with monitor_connection(gate_lab) as monitor, mysqld_max_connections(monitor, 60):
        gate = make_gate(workers=2, login_timeout=2.0, reserved_connections=10)
        assert gate.set_mysqld_max_connections(scalar(monitor, "SELECT @@global.max_connections"))
        assert gate.backend_cap == 50
        gate.admit(time.monotonic() + 60)
        baseline = threads_connected(monitor)
        flood = open_bare(gate.port, FLOOD)
        try:
            wait_until(lambda: gate.backend_connections() == 50, 10, "the cap to fill")
            # Everyone beyond the cap got ERR 1040 at once, and mysqld never saw them.
            wait_until(lambda: gate.stats().refused_full == FLOOD - 50, 10, "the rest to be refused")
            assert threads_connected(monitor) <= baseline + 50
            assert all(sock.recv(4096)[4] in (10, 0xFF) for sock in flood)  # a greeting or ERR
            error = _refused(gate, gate_lab)
            assert error.args[0] == ER_CON_COUNT_ERROR and "too many connections" in error.args[1]
            # The reserve is there for the agent and administrators, straight to mysqld.
            node, account = gate_lab.mysql[0], gate_lab.accounts["agent"]
            with pymysql.connect(host=node.host, port=node.port, user=account.user, password=account.password,
                                 connect_timeout=5, ssl_disabled=True) as direct:
                assert scalar(direct, "SELECT 1") == 1
            # Nobody logged in: after login_timeout the gate drops them and their backends.
            wait_until(lambda: gate.backend_connections() == 0, 10, "silent clients to be dropped")
            wait_until(lambda: threads_connected(monitor) <= baseline, 10, "mysqld to see them go")
            assert gate.stats().login_timeouts >= 50
            with connect_via(gate, gate_lab) as conn:
                assert scalar(conn, "SELECT 1") == 1
        finally:
            for sock in flood:
                sock.close()


def test_logged_in_clients_fill_the_cap_on_either_path(
    make_gate: GateFactory, gate_lab: LabCluster, forwarding: str
) -> None:
    with monitor_connection(gate_lab) as monitor:
        gate = make_gate(workers=2, max_connections=6)
        gate.admit(time.monotonic() + 60)
        baseline = threads_connected(monitor)
        clients = [connect_via(gate, gate_lab) for _ in range(6)]
        try:
            stats = gate.stats()
            assert {row.forwarding for row in stats.connections} == {forwarding}
            assert stats.backend_connections == 6
            assert _refused(gate, gate_lab).args[0] == ER_CON_COUNT_ERROR
            assert threads_connected(monitor) <= baseline + 6
            # Writes from the clients already in keep going.
            for conn in clients:
                assert scalar(conn, "SELECT 1") == 1
            clients.pop().close()
            wait_until(lambda: gate.backend_connections() == 5, 5, "the closed link's slot to come back")
            clients.append(connect_via(gate, gate_lab))
            assert scalar(clients[-1], "SELECT 1") == 1
        finally:
            for conn in clients:
                conn.close()


def test_a_client_that_says_nothing_is_dropped_after_the_login_timeout(
    make_gate: GateFactory, gate_lab: LabCluster
) -> None:
    gate = make_gate(workers=1, login_timeout=0.5)
    gate.admit(time.monotonic() + 60)
    with socket.create_connection(("127.0.0.1", gate.port), timeout=5) as silent:
        started = time.monotonic()
        greeting = silent.recv(4096)
        assert greeting[4] == 10  # mysqld's handshake, relayed
        with contextlib.suppress(ConnectionResetError):
            while silent.recv(4096):
                pass
        dropped_after = time.monotonic() - started
    assert 0.3 < dropped_after < 5
    wait_until(lambda: gate.backend_connections() == 0, 5, "its backend slot to come back")
    # A client that logs in keeps its connection past the timeout.
    with connect_via(gate, gate_lab) as conn:
        wait_past(time.monotonic() + 0.5, slack=0.5)
        assert scalar(conn, "SELECT 1") == 1
    assert gate.stats().login_timeouts == 1


def _refused(gate: Any, lab: LabCluster) -> pymysql.err.OperationalError:
    with pytest.raises(pymysql.err.OperationalError) as caught:
        connect_via(gate, lab).close()
    return caught.value


def test_the_cap_follows_mysqlds_max_connections_at_run_time(
    make_gate: GateFactory, gate_lab: LabCluster
) -> None:
    gate = make_gate(workers=2, reserved_connections=10)
    assert gate.backend_cap == 141  # mysqld's compiled-in 151 until the agent has read the real one
    gate.set_mysqld_max_connections(12)
    gate.admit(time.monotonic() + 60)
    first, second = connect_via(gate, gate_lab), connect_via(gate, gate_lab)
    try:
        assert gate.backend_cap == 2
        assert _refused(gate, gate_lab).args[0] == ER_CON_COUNT_ERROR
        gate.set_mysqld_max_connections(11)  # lowered below what is held: nobody is cut
        assert gate.backend_cap == 1
        assert scalar(first, "SELECT 1") == scalar(second, "SELECT 1") == 1
        assert _refused(gate, gate_lab).args[0] == ER_CON_COUNT_ERROR
        gate.set_mysqld_max_connections(200)
        with connect_via(gate, gate_lab) as third:
            assert scalar(third, "SELECT 1") == 1
    finally:
        first.close()
        second.close()

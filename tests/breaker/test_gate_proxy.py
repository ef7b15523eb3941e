"""The gate in front of a real MariaDB, driven by real PyMySQL clients."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import pymysql
import pytest

from dbfence.breaker.gate import Gate, GateError
from dbfence.breaker.packets import CR_CONN_HOST_ERROR, ER_CON_COUNT_ERROR, ER_OPTION_PREVENTS_STATEMENT
from dbfence.breaker.state import Blocking, IllegalTransition
from dbfence.lab.cluster import LabCluster
from dbfence.lab.procs import free_port
from tests.breaker.conftest import GateFactory
from tests.breaker.gate_helpers import connect_via, mark_landed
from tests.breaker.waiting import wait_past, wait_until

if TYPE_CHECKING:
    Connection = pymysql.connections.Connection[Any]


def select_one(conn: Connection) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def insert_mark(conn: Connection, mark: str) -> None:
    with conn.cursor() as cur:
        cur.execute("INSERT INTO gate_t.marks (mark) VALUES (%s)", (mark,))


def new_mark() -> str:
    return uuid.uuid4().hex


def refused_error(gate: Gate, lab: LabCluster) -> pymysql.err.OperationalError:
    with pytest.raises(pymysql.err.OperationalError) as caught:
        connect_via(gate, lab).close()
    return caught.value


def test_queries_flow_while_admitting_and_show_in_the_connection_table(
    make_gate: GateFactory, gate_lab: LabCluster, forwarding: str
) -> None:
    gate = make_gate()
    gate.admit(time.monotonic() + 30)
    mark = new_mark()
    with connect_via(gate, gate_lab) as conn:
        for _ in range(5):
            assert select_one(conn) == 1
        insert_mark(conn, mark)
        stats = gate.stats()
        assert stats.state == "admitting"
        assert stats.open_connections == 1
        [row] = stats.connections
        assert row.client.startswith("127.0.0.1:")
        assert row.queries >= 6  # the 5 SELECTs and the INSERT, plus the driver's own commands
        assert row.bytes_in > 0 and row.bytes_out > 0 and row.age > 0
        assert row.forwarding == forwarding
        assert stats.kernel_forwarding == ("on" if forwarding == "kernel" else "off: kernel_forwarding = off")
    assert mark_landed(gate_lab, mark)


def test_unix_socket_backend(make_gate: GateFactory, gate_lab: LabCluster) -> None:
    # Kernel forwarding needs TCP to mysqld: "auto" falls back to the workers and says why.
    gate = make_gate(backend_socket=gate_lab.mysql[0].socket, workers=1, kernel_forwarding="auto")
    assert "Unix socket" in gate.kernel_forwarding_off
    gate.admit(time.monotonic() + 30)
    with connect_via(gate, gate_lab) as conn:
        assert select_one(conn) == 1
        assert [row.forwarding for row in gate.stats().connections] == ["worker"]


def test_kernel_forwarding_on_refuses_to_start_where_it_cannot_work(
    make_gate: GateFactory, gate_lab: LabCluster
) -> None:
    with pytest.raises(GateError, match="Unix socket"):
        make_gate(backend_socket=gate_lab.mysql[0].socket, workers=1, kernel_forwarding="on")


def test_a_new_connection_to_a_gate_never_admitted_gets_the_err_packet(
    make_gate: GateFactory, gate_lab: LabCluster
) -> None:
    gate = make_gate()
    error = refused_error(gate, gate_lab)
    assert error.args[0] == ER_OPTION_PREVENTS_STATEMENT
    assert "dbfence: this node is not the primary (not yet admitted)" in error.args[1]


def test_block_cuts_connections_in_every_worker_and_refuses_new_ones_with_the_reason(
    make_gate: GateFactory, gate_lab: LabCluster
) -> None:
    gate = make_gate(workers=2)
    gate.admit(time.monotonic() + 30)
    pool: list[Connection] = []
    try:
        # SO_REUSEPORT spreads connections by hash: open until both workers hold some.
        while len(pool) < 64:
            pool.append(connect_via(gate, gate_lab))
            if len(pool) >= 4 and all(w.open_connections > 0 for w in gate.stats().workers):
                break
        assert all(w.open_connections > 0 for w in gate.stats().workers)
        for conn in pool:
            assert select_one(conn) == 1

        gate.block("switchover to db2")
        wait_until(lambda: gate.stats().open_connections == 0, 5, "every worker to cut its links")
        marks = [new_mark() for _ in pool]
        for conn, mark in zip(pool, marks, strict=True):
            with pytest.raises(pymysql.err.OperationalError):
                insert_mark(conn, mark)
        assert not any(mark_landed(gate_lab, mark) for mark in marks)

        error = refused_error(gate, gate_lab)
        assert error.args[0] == ER_OPTION_PREVENTS_STATEMENT
        assert error.args[1] == "dbfence: this node is not the primary (switchover to db2)"
        assert isinstance(gate.state, Blocking)
        with pytest.raises(IllegalTransition):
            gate.extend(time.monotonic() + 30)  # admitting again needs admit() with a fresh deadline
    finally:
        for conn in pool:
            conn.close()


def test_admitting_again_after_a_block_lets_new_connections_but_not_stale_ones(
    make_gate: GateFactory, gate_lab: LabCluster
) -> None:
    gate = make_gate()
    gate.admit(time.monotonic() + 30)
    with connect_via(gate, gate_lab) as stale:
        assert select_one(stale) == 1
        gate.block("fenced")
        gate.admit(time.monotonic() + 30)
        mark = new_mark()
        with pytest.raises(pymysql.err.OperationalError):
            insert_mark(stale, mark)
        assert not mark_landed(gate_lab, mark)
    with connect_via(gate, gate_lab) as fresh:
        assert select_one(fresh) == 1


def test_a_stale_pooled_connection_cannot_run_a_statement_after_the_deadline(
    make_gate: GateFactory, gate_lab: LabCluster
) -> None:
    gate = make_gate()
    deadline = time.monotonic() + 0.5
    gate.admit(deadline)
    with connect_via(gate, gate_lab) as conn:
        assert select_one(conn) == 1
        wait_past(deadline)
        mark = new_mark()
        with pytest.raises(pymysql.err.OperationalError):
            insert_mark(conn, mark)
    assert not mark_landed(gate_lab, mark)
    error = refused_error(gate, gate_lab)
    assert "not the primary (lease expired)" in error.args[1]


def test_the_deadline_blocks_by_itself_when_the_control_loop_freezes(
    make_gate: GateFactory, gate_lab: LabCluster
) -> None:
    gate = make_gate()
    ttl = 0.3
    gate.admit(time.monotonic() + ttl)
    frozen = threading.Event()
    stopped = threading.Event()
    last_deadline = [0.0]

    def control_loop() -> None:
        # Renews like the agent would; once "frozen" it stops renewing but stays alive (a pause).
        while not stopped.is_set():
            if frozen.is_set():
                stopped.wait(0.05)
                continue
            deadline = time.monotonic() + ttl
            gate.extend(deadline)
            last_deadline[0] = deadline
            stopped.wait(0.05)

    thread = threading.Thread(target=control_loop, daemon=True)
    thread.start()
    try:
        with connect_via(gate, gate_lab) as conn:
            # Several TTLs of traffic: renewals keep it flowing.
            until = time.monotonic() + 3 * ttl
            while time.monotonic() < until:
                insert_mark(conn, new_mark())
            frozen.set()
            wait_past(last_deadline[0])
            mark = new_mark()
            with pytest.raises(pymysql.err.OperationalError):
                insert_mark(conn, mark)
        assert not mark_landed(gate_lab, mark)
        assert "lease expired" in refused_error(gate, gate_lab).args[1]
    finally:
        stopped.set()
        thread.join()


def _insert_in_background(conn: Connection, mark: str) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            insert_mark(conn, mark)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _sigstop_window(
    gate: Gate, gate_lab: LabCluster, renew_while_stopped: bool, forwarding: str
) -> tuple[str, list[BaseException], bool]:
    """Stop the worker, send an INSERT, let the deadline pass, continue.

    Returns the mark, the client's errors, and whether the row had landed before SIGCONT. In the
    worker the INSERT is sent before the deadline (the hard case: the chunk waits in the socket
    for a process that wakes up too late). In the kernel it is sent after the deadline: one sent
    before it is forwarded at once, frozen process or not.
    """
    [worker_pid] = gate.worker_pids()
    deadline = time.monotonic() + 0.6
    gate.admit(deadline)
    mark = new_mark()
    with connect_via(gate, gate_lab, read_timeout=10) as conn:
        assert select_one(conn) == 1
        os.kill(worker_pid, signal.SIGSTOP)
        try:
            if renew_while_stopped:
                gate.extend(time.monotonic() + 30)
            if forwarding == "kernel" and not renew_while_stopped:
                wait_past(deadline, slack=0.05)
            thread, errors = _insert_in_background(conn, mark)
            if forwarding == "kernel" and renew_while_stopped:
                wait_until(lambda: mark_landed(gate_lab, mark), 5, "the kernel to forward without the worker")
            wait_past(deadline, slack=0.2)
            landed_while_stopped = mark_landed(gate_lab, mark)
        finally:
            os.kill(worker_pid, signal.SIGCONT)
        thread.join(15)
        assert not thread.is_alive()
    return mark, errors, landed_while_stopped


@pytest.mark.parametrize("tick", [0.02, 60.0], ids=["with-tick", "data-path-only"])
def test_sigstop_past_the_deadline_wakes_up_blocking(
    make_gate: GateFactory, gate_lab: LabCluster, forwarding: str, tick: float
) -> None:
    # With a 60 s tick only the per-chunk check in the data path can stop the INSERT (in the
    # kernel: the program's check, and the CTL_BLOCK-free wake-up then cuts the link).
    gate = make_gate(workers=1, tick=tick)
    mark, errors, landed_while_stopped = _sigstop_window(gate, gate_lab, False, forwarding)
    assert errors and isinstance(errors[0], pymysql.err.OperationalError)
    assert not landed_while_stopped
    assert not mark_landed(gate_lab, mark)


def test_sigstop_with_a_renewed_lease_forwards(
    make_gate: GateFactory, gate_lab: LabCluster, forwarding: str
) -> None:
    # The control case for the test above: the same window with a valid lease does forward; in
    # the kernel even before the worker wakes up.
    gate = make_gate(workers=1)
    mark, errors, landed_while_stopped = _sigstop_window(gate, gate_lab, True, forwarding)
    assert errors == []
    assert mark_landed(gate_lab, mark)
    assert landed_while_stopped == (forwarding == "kernel")


def test_garbage_silent_and_flooding_clients_do_not_disturb_others(
    make_gate: GateFactory, gate_lab: LabCluster
) -> None:
    gate = make_gate(workers=2)
    gate.admit(time.monotonic() + 60)
    address = ("127.0.0.1", gate.port)
    silent = [socket.create_connection(address) for _ in range(20)]
    garbage = [socket.create_connection(address) for _ in range(20)]
    try:
        with connect_via(gate, gate_lab) as good:
            for sock in garbage:
                sock.sendall(os.urandom(3000))
            for _ in range(200):  # a connect/close flood
                socket.create_connection(address).close()
            for sock in garbage:
                sock.sendall(b"\xff" * 70000)
            for _ in range(50):
                assert select_one(good) == 1
            marks = [new_mark() for _ in range(20)]
            for mark in marks:
                insert_mark(good, mark)
        assert all(mark_landed(gate_lab, mark) for mark in marks)

        def another_connects() -> bool:
            try:
                with connect_via(gate, gate_lab) as another:
                    return select_one(another) == 1
            except pymysql.err.OperationalError as exc:
                if exc.args[0] != ER_CON_COUNT_ERROR:
                    raise
                return False

        # The flood's 200 closed links give their backend slots back as the workers get to them:
        # under load a client right after it was refused (1040, the cap full) once in a full run.
        wait_until(another_connects, 10, "another client through the gate", interval=0.05)
    finally:
        for sock in silent + garbage:
            sock.close()


def test_mysqld_down_gives_an_err_packet_not_a_hang(make_gate: GateFactory, gate_lab: LabCluster) -> None:
    gate = make_gate(backend_port=free_port(), workers=1)
    gate.admit(time.monotonic() + 30)
    started = time.monotonic()
    error = refused_error(gate, gate_lab)
    assert error.args[0] == CR_CONN_HOST_ERROR
    assert "dbfence: cannot reach the local mysqld" in error.args[1]
    assert time.monotonic() - started < 5


def test_max_connections_refuses_with_too_many_connections(
    make_gate: GateFactory, gate_lab: LabCluster
) -> None:
    gate = make_gate(workers=1, max_connections=2)
    gate.admit(time.monotonic() + 30)
    with connect_via(gate, gate_lab) as first, connect_via(gate, gate_lab) as second:
        error = refused_error(gate, gate_lab)
        assert error.args[0] == ER_CON_COUNT_ERROR
        assert "too many connections" in error.args[1]
        assert select_one(first) == select_one(second) == 1
    wait_until(lambda: gate.stats().open_connections == 0, 5, "closed links to be forgotten")
    with connect_via(gate, gate_lab) as third:
        assert select_one(third) == 1


def test_idle_timeout_closes_quiet_connections(make_gate: GateFactory, gate_lab: LabCluster) -> None:
    gate = make_gate(workers=1, idle_timeout=0.3)
    gate.admit(time.monotonic() + 30)
    with connect_via(gate, gate_lab) as conn:
        assert select_one(conn) == 1
        wait_until(lambda: gate.stats().open_connections == 0, 5, "the idle link to be closed")
        with pytest.raises(pymysql.err.OperationalError):
            select_one(conn)


def test_drain_waits_for_open_transactions_then_blocks(make_gate: GateFactory, gate_lab: LabCluster) -> None:
    gate = make_gate(workers=1)
    gate.admit(time.monotonic() + 60)
    mark = new_mark()
    with connect_via(gate, gate_lab) as idle, connect_via(gate, gate_lab) as busy:
        assert select_one(idle) == 1
        with busy.cursor() as cur:
            cur.execute("BEGIN")
        insert_mark(busy, mark)
        results: list[Any] = []
        drainer = threading.Thread(target=lambda: results.append(gate.drain(10.0)), daemon=True)
        drainer.start()
        wait_until(lambda: gate.stats().open_connections == 1, 5, "the idle link to be closed")
        assert "draining for switchover" in refused_error(gate, gate_lab).args[1]
        with busy.cursor() as cur:
            cur.execute("COMMIT")  # the transaction in flight completes
        drainer.join(15)
        [result] = results
        assert result.cut == 0 and result.closed_gracefully == 2 and result.seconds < 5
        with pytest.raises(pymysql.err.OperationalError):
            select_one(idle)
    assert mark_landed(gate_lab, mark)
    assert "drained for switchover" in refused_error(gate, gate_lab).args[1]


def test_drain_of_a_blocked_gate_is_refused(make_gate: GateFactory, gate_lab: LabCluster) -> None:
    gate = make_gate(workers=1)
    with pytest.raises(IllegalTransition):
        gate.drain(1.0)
    assert "not yet admitted" in refused_error(gate, gate_lab).args[1]


def test_a_result_past_the_kernel_budget_arrives_whole_and_the_link_goes_on(
    make_gate: GateFactory, gate_lab: LabCluster, forwarding: str
) -> None:
    """A 4 MiB result: in the kernel its first MiB is delivered socket to socket and the rest
    through the worker (the budget). Every row arrives, in order; the link then keeps working and
    a drain still sees the transaction boundary in a reply that came through the worker."""
    gate = make_gate(workers=1)
    gate.admit(time.monotonic() + 60)
    with connect_via(gate, gate_lab, cursorclass=pymysql.cursors.SSCursor) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT seq, REPEAT(CHAR(65 + seq % 26), 1024) FROM gate_t.seq_1_to_4000")
            count = 0
            for seq, text in cur:
                count += 1
                assert (seq, text) == (count, bytes([65 + count % 26]) * 1024)  # CHAR() is binary
            assert count == 4000
        [row] = gate.stats().connections
        assert row.forwarding == ("kernel+worker" if forwarding == "kernel" else "worker")
        assert row.bytes_out > 4_000_000
        for _ in range(3):
            assert select_one(conn) == 1
        result = gate.drain(5.0)
        assert result.closed_gracefully == 1 and result.cut == 0

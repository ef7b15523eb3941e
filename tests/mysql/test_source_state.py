"""A repoint's read of the new source's GTID state never holds the agent's round past its budget
(soak seed 3: 10.1 s on a source partitioned just after the TCP connect), and a slow source's
answer is still used on the next round."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from dbfence.lab.cluster import LabCluster
from dbfence.mysql.connection import Endpoint
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.errors import MysqlUnavailableError
from dbfence.mysql.source_state import SourceNotAnsweringError, SourceStateReader
from tests.mysql.mysql_lab_helpers import actions, creds, endpoint, poll


@contextlib.contextmanager
def silent_listener() -> Iterator[Endpoint]:
    """A loopback port whose connections the kernel completes but no server ever greets."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield Endpoint("127.0.0.1", sock.getsockname()[1])
    finally:
        sock.close()


@contextlib.contextmanager
def slow_relay(target: Endpoint, delay_s: float) -> Iterator[tuple[Endpoint, list[int]]]:
    """A loopback relay to ``target`` that holds each new connection ``delay_s`` before relaying
    (a source that answers, slowly); the list counts the connections it accepted."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []
    stop = threading.Event()

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(1)
            time.sleep(delay_s)
            upstream = socket.create_connection((target.host, target.port))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(src, dst), daemon=True).start()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield Endpoint("127.0.0.1", listener.getsockname()[1]), accepted
    finally:
        stop.set()
        server.join(timeout=5)
        listener.close()


def test_a_source_that_never_greets_holds_each_round_at_most_the_budget() -> None:
    reader = SourceStateReader(Credentials("agent", "unused"), budget_s=0.3)
    with silent_listener() as source:
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(SourceNotAnsweringError, match=r"did not answer .* within 0\.3 s"):
                reader.binlog_state(source, "db3")
            assert time.monotonic() - started < 1.0
            assert reader.reads_in_flight() == 1  # the same read each round, not one more
        # The background read ends by its own socket timeouts; its error is reported once, then
        # the next round reads afresh.
        poll(lambda: reader.reads_in_flight() == 0, 10.0, "the background read to give up")
        with pytest.raises(MysqlUnavailableError) as failed:
            reader.binlog_state(source, "db3")
        assert not isinstance(failed.value, SourceNotAnsweringError)
        with pytest.raises(SourceNotAnsweringError):
            reader.binlog_state(source, "db3")
        assert reader.reads_in_flight() == 1


def test_the_state_read_matches_the_source(shared_lab: LabCluster) -> None:
    reader = SourceStateReader(creds(shared_lab), budget_s=2.0)
    state = reader.binlog_state(endpoint(shared_lab, "db1"), "db1")
    assert state == actions(shared_lab, "db1").gtid_positions().binlog_state


def test_a_slow_source_answers_on_the_next_round(shared_lab: LabCluster) -> None:
    reader = SourceStateReader(creds(shared_lab), budget_s=0.2)
    with slow_relay(endpoint(shared_lab, "db1"), delay_s=0.6) as (source, accepted):
        with pytest.raises(SourceNotAnsweringError):
            reader.binlog_state(source, "db1")
        poll(lambda: reader.reads_in_flight() == 0, 10.0, "the slow read to finish")
        connections = len(accepted)
        started = time.monotonic()
        state = reader.binlog_state(source, "db1")
        assert time.monotonic() - started < 0.2  # the answer was waiting: no new read
        assert len(accepted) == connections
    assert state == actions(shared_lab, "db1").gtid_positions().binlog_state


def test_an_answer_older_than_max_age_is_read_again(shared_lab: LabCluster) -> None:
    now = [0.0]
    reader = SourceStateReader(creds(shared_lab), budget_s=0.2, max_age_s=5.0, clock=lambda: now[0])
    with slow_relay(endpoint(shared_lab, "db1"), delay_s=0.6) as (source, accepted):
        with pytest.raises(SourceNotAnsweringError):
            reader.binlog_state(source, "db1")
        poll(lambda: reader.reads_in_flight() == 0, 10.0, "the slow read to finish")
        connections = len(accepted)
        now[0] += 6.0  # the source may have written since: its old answer is not used
        with pytest.raises(SourceNotAnsweringError):
            reader.binlog_state(source, "db1")
        poll(lambda: len(accepted) > connections, 5.0, "a new read of the source")

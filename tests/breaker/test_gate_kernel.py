"""The kernel forwarding program on plain loopback TCP sockets: what it forwards, counts and refuses."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from dbfence.breaker.config import GateConfig
from dbfence.breaker.kernel import TAIL_SIZE, KernelForwarder, probe
from dbfence.breaker.shared import SharedRecord, fence_word
from dbfence.breaker.worker import ClientSide, Worker
from dbfence.lab.echo import LOGIN_OK
from tests.breaker.waiting import receive_exactly, wait_until

_MISSING = probe()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"no kernel forwarding here: {_MISSING}")

EPOCH = 3


@dataclass
class Link:
    """app <-> client_side (gate) and backend_side (gate) <-> server, spliced in the kernel."""

    app: socket.socket
    client_side: socket.socket
    backend_side: socket.socket
    server: socket.socket
    cookies: tuple[int, int]


def _pair(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    outer = socket.create_connection(listener.getsockname())
    inner, _ = listener.accept()
    for sock in (outer, inner):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return outer, inner


@pytest.fixture
def kernel() -> Iterator[KernelForwarder]:
    forwarder = KernelForwarder.create(16)
    fence = forwarder.fence_words()
    fence[0] = fence_word(time.monotonic() + 60, EPOCH)
    try:
        yield forwarder
    finally:
        fence.release()
        forwarder.close()


@pytest.fixture
def link(kernel: KernelForwarder) -> Iterator[Link]:
    listener = socket.create_server(("127.0.0.1", 0))
    app, client_side = _pair(listener)
    backend_side, server = _pair(listener)
    listener.close()
    cookies = kernel.splice(client_side.fileno(), backend_side.fileno(), EPOCH)
    try:
        yield Link(app, client_side, backend_side, server, cookies)
    finally:
        for sock in (app, client_side, backend_side, server):
            sock.close()


def nothing_waiting(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
    return False


def set_fence(kernel: KernelForwarder, deadline: float, epoch: int) -> None:
    fence = kernel.fence_words()
    fence[0] = fence_word(deadline, epoch)
    fence.release()


def test_both_directions_pass_and_are_counted(kernel: KernelForwarder, link: Link) -> None:
    query = b"\x06\x00\x00\x00\x03query"
    link.app.sendall(query)
    assert receive_exactly(link.server, len(query)) == query
    reply = bytes(range(200))
    link.server.sendall(reply)
    assert receive_exactly(link.app, 200) == reply
    client, backend = kernel.counters(link.cookies[0]), kernel.counters(link.cookies[1])
    assert client is not None and backend is not None
    assert (client.received, client.chunks) == (len(query), 1)
    assert backend.received == 200 and backend.chunks >= 1
    assert backend.tail == reply[-TAIL_SIZE:] and not backend.tail_complete
    assert client.tail == b""  # only mysqld's side keeps a tail
    assert 0 < client.last_active <= backend.last_active <= time.monotonic()


def test_a_short_reply_is_kept_whole(kernel: KernelForwarder, link: Link) -> None:
    link.server.sendall(b"ok")
    assert receive_exactly(link.app, 2) == b"ok"
    backend = kernel.counters(link.cookies[1])
    assert backend is not None and backend.tail == b"ok" and backend.tail_complete


@pytest.mark.parametrize(
    ("deadline_in", "epoch"),
    [(-0.001, EPOCH), (60.0, EPOCH + 1), (None, EPOCH)],
    ids=["lease-expired", "new-epoch", "blocked"],
)
def test_a_chunk_the_fence_refuses_goes_to_the_worker_not_to_mysqld(
    kernel: KernelForwarder, link: Link, deadline_in: float | None, epoch: int
) -> None:
    set_fence(kernel, 0.0 if deadline_in is None else time.monotonic() + deadline_in, epoch)
    link.app.sendall(b"\x01\x00\x00\x00\x0e")
    # The worker's socket receives it (the worker then refuses it and cuts the link) ...
    assert receive_exactly(link.client_side, 5) == b"\x01\x00\x00\x00\x0e"
    # ... and so the server never does: one chunk, one verdict.
    assert nothing_waiting(link.server)
    client = kernel.counters(link.cookies[0])
    assert client is not None and client.chunks == 0


def test_forwarding_resumes_with_a_valid_word_for_the_same_epoch(kernel: KernelForwarder, link: Link) -> None:
    set_fence(kernel, time.monotonic() - 1, EPOCH)
    link.app.sendall(b"late")
    assert receive_exactly(link.client_side, 4) == b"late"
    set_fence(kernel, time.monotonic() + 60, EPOCH)  # a renewal in time (the gate itself never
    link.app.sendall(b"renewed")                      # renews an expired lease: see GateState)
    assert receive_exactly(link.server, 7) == b"renewed"


def test_forgotten_links_have_no_counters(kernel: KernelForwarder, link: Link) -> None:
    kernel.forget(link.cookies)
    assert kernel.counters(link.cookies[0]) is None
    kernel.forget(link.cookies)  # twice is harmless


@pytest.mark.parametrize("client_speaks_early", [False, True], ids=["client-waits", "client-speaks-early"])
def test_the_worker_hands_a_link_over_only_if_no_byte_could_be_overtaken(
    kernel: KernelForwarder, client_speaks_early: bool
) -> None:
    """At the login OK the worker splices the link, unless a byte waits unread in one of its
    sockets (a client that did not wait for the OK): the kernel could send a later chunk first.
    Driven directly, with real sockets, so which of two ready sockets the loop serves first
    does not decide the case."""
    listener = socket.create_server(("127.0.0.1", 0))
    app, client_side = _pair(listener)
    backend_side, server = _pair(listener)
    listener.close()
    shared = SharedRecord.create()
    control, agent_end = socket.socketpair()
    loop = asyncio.new_event_loop()
    try:
        worker = Worker(GateConfig(listen_port=0), 0, shared, control, 0, loop, kernel)
        link = ClientSide(worker)
        link.fd, link.backend_fd, link.epoch = client_side.fileno(), backend_side.fileno(), EPOCH
        if client_speaks_early:
            app.sendall(b"early")
            wait_until(lambda: not nothing_waiting(client_side), 5, "the early bytes to arrive")
        worker.watch_login(link, LOGIN_OK)
        assert link.logging_in is False
        if client_speaks_early:
            assert link.cookies is None and worker.kernel_refusals == 1
            assert receive_exactly(client_side, 5) == b"early"  # still the worker's to forward
        else:
            assert link.cookies is not None and worker.handed_to_kernel == 1
            app.sendall(b"query")
            assert receive_exactly(server, 5) == b"query"  # the kernel forwards it
    finally:
        loop.close()
        for sock in (app, client_side, backend_side, server, control, agent_end):
            sock.close()
        shared.close()

"""Kernel forwarding on plain loopback TCP sockets: what it joins, delivers, counts and refuses."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from dbfence.breaker.bpf import program_exists
from dbfence.breaker.config import GateConfig
from dbfence.breaker.kernel import (
    SHORTCUT_BUDGET,
    TAIL_SIZE,
    Joined,
    KernelForwarder,
    probe,
    socket_cookie,
    socket_key,
)
from dbfence.breaker.shared import SharedRecord, fence_word
from dbfence.breaker.worker import ClientSide, Worker
from dbfence.lab.echo import LOGIN_OK
from tests.breaker.waiting import receive_exactly, wait_until

_MISSING = probe()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"no kernel forwarding here: {_MISSING}")

EPOCH = 3


@dataclass
class Link:
    """app <-> client_side (the gate's) and backend_side (the gate's) <-> server (mysqld's)."""

    app: socket.socket
    client_side: socket.socket
    backend_side: socket.socket
    server: socket.socket

    def ends(self) -> tuple[tuple[tuple[str, int], tuple[str, int]], tuple[tuple[str, int], tuple[str, int]]]:
        return ((self.client_side.getsockname(), self.client_side.getpeername()),
                (self.backend_side.getsockname(), self.backend_side.getpeername()))

    def cookies(self) -> tuple[int, int]:
        return socket_cookie(self.client_side.fileno()), socket_cookie(self.backend_side.fileno())

    def close(self) -> None:
        for sock in (self.app, self.client_side, self.backend_side, self.server):
            sock.close()


@dataclass
class Lab:
    gate: socket.socket  # the gate's listener
    mysqld: socket.socket  # mysqld's listener
    kernel: KernelForwarder

    def connect(self, announce: bool = True) -> Link:
        app = socket.create_connection(self.gate.getsockname())
        client_side, _ = self.gate.accept()
        backend_side = socket.socket()
        backend_side.bind(("127.0.0.1", 0))
        if announce:
            self.kernel.announce(backend_side.getsockname())
        backend_side.connect(self.mysqld.getsockname())
        server, _ = self.mysqld.accept()
        for sock in (app, client_side, backend_side, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Link(app, client_side, backend_side, server)

    def join(self, link: Link) -> Joined:
        joined = self.kernel.join(*link.ends(), link.cookies(), EPOCH)
        assert joined is not None
        return joined


@pytest.fixture
def lab() -> Iterator[Lab]:
    gate, mysqld = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    forwarder = KernelForwarder.create(gate.getsockname()[1], mysqld.getsockname()[1], 16)
    set_fence(forwarder, time.monotonic() + 60, EPOCH)
    try:
        yield Lab(gate, mysqld, forwarder)
    finally:
        forwarder.close()
        gate.close()
        mysqld.close()


@pytest.fixture
def link(lab: Lab) -> Iterator[Link]:
    made = lab.connect()
    try:
        yield made
    finally:
        made.close()


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


def test_a_joined_link_goes_socket_to_socket_and_is_counted(lab: Lab, link: Link) -> None:
    joined = lab.join(link)
    query = b"\x06\x00\x00\x00\x03query"
    link.app.sendall(query)
    assert receive_exactly(link.server, len(query)) == query
    reply = bytes(range(200))
    link.server.sendall(reply)
    assert receive_exactly(link.app, 200) == reply
    assert nothing_waiting(link.client_side) and nothing_waiting(link.backend_side)  # no TCP hop
    client, backend = lab.kernel.counters(joined.cookies[0]), lab.kernel.counters(joined.cookies[1])
    assert client is not None and backend is not None
    assert (client.received, client.chunks) == (len(query), 1)
    assert (backend.received, backend.chunks) == (200, 1)
    assert backend.tail == reply[-TAIL_SIZE:] and not backend.tail_complete
    assert client.tail == b""  # only mysqld's direction keeps a tail
    assert 0 < client.last_active <= backend.last_active <= time.monotonic()
    assert not (client.overflowed or client.refused or backend.overflowed or backend.refused)


@pytest.mark.parametrize("size", [1, 13, 64])
def test_a_short_reply_is_kept_whole(lab: Lab, link: Link, size: int) -> None:
    joined = lab.join(link)
    reply = bytes(range(100, 100 + size))
    link.server.sendall(reply)
    assert receive_exactly(link.app, size) == reply
    backend = lab.kernel.counters(joined.cookies[1])
    assert backend is not None and backend.tail == reply and backend.tail_complete


@pytest.mark.parametrize(
    ("deadline_in", "epoch"),
    [(-0.001, EPOCH), (60.0, EPOCH + 1), (None, EPOCH)],
    ids=["lease-expired", "new-epoch", "blocked"],
)
def test_a_message_the_fence_refuses_goes_to_the_worker_not_to_mysqld(
    lab: Lab, link: Link, deadline_in: float | None, epoch: int
) -> None:
    joined = lab.join(link)
    set_fence(lab.kernel, 0.0 if deadline_in is None else time.monotonic() + deadline_in, epoch)
    link.app.sendall(b"\x01\x00\x00\x00\x0e")
    # The gate's socket receives it over TCP (the worker then cuts the link) ...
    assert receive_exactly(link.client_side, 5) == b"\x01\x00\x00\x00\x0e"
    # ... and so mysqld never does.
    assert nothing_waiting(link.server)
    client = lab.kernel.counters(joined.cookies[0])
    assert client is not None and client.chunks == 0 and client.refused


def test_a_refused_link_stays_refused_after_a_renewal(lab: Lab, link: Link) -> None:
    """Once a message was refused (the worker will cut the link), a renewal of the same epoch must
    not let a later one through: it would reach mysqld ahead of the refused one."""
    lab.join(link)
    set_fence(lab.kernel, time.monotonic() - 1, EPOCH)
    link.app.sendall(b"late")
    assert receive_exactly(link.client_side, 4) == b"late"
    set_fence(lab.kernel, time.monotonic() + 60, EPOCH)
    link.app.sendall(b"renewed")
    assert receive_exactly(link.client_side, 7) == b"renewed"
    assert nothing_waiting(link.server)


@pytest.mark.parametrize("direction", ["replies", "commands"])
def test_a_direction_over_its_budget_goes_through_the_worker_in_order(
    lab: Lab, link: Link, direction: str
) -> None:
    """A client that stops reading (or a mysqld that does) must not let the other side queue
    without bound in its socket: past the budget, that direction goes over TCP (to the worker,
    which has flow control), and stays there."""
    joined = lab.join(link)
    replies = direction == "replies"
    sender, receiver = (link.server, link.app) if replies else (link.app, link.server)
    gate_side = link.backend_side if replies else link.client_side
    index = 1 if replies else 0
    first, second = b"a" * (SHORTCUT_BUDGET - 100), b"b" * 1000
    sender.sendall(first)
    sender.sendall(second)  # over the budget: over TCP
    assert receive_exactly(gate_side, len(second)) == second
    sender.sendall(b"c")  # and everything after it
    assert receive_exactly(gate_side, 1) == b"c"
    counted = lab.kernel.counters(joined.cookies[index])
    assert counted is not None and counted.overflowed and not counted.refused
    assert counted.received == len(first)
    # The receiver gets what the kernel delivered; what the worker forwards comes after it.
    assert receive_exactly(receiver, len(first)) == first
    assert nothing_waiting(receiver)
    other = lab.kernel.counters(joined.cookies[1 - index])
    assert other is not None and not other.overflowed


def test_the_budget_starts_again_when_the_other_side_speaks(lab: Lab, link: Link) -> None:
    joined = lab.join(link)
    half = b"r" * (SHORTCUT_BUDGET // 2 + 1)
    for _ in range(3):
        link.server.sendall(half)
        assert receive_exactly(link.app, len(half)) == half
        link.app.sendall(b"next")
        assert receive_exactly(link.server, 4) == b"next"
    backend = lab.kernel.counters(joined.cookies[1])
    assert backend is not None and not backend.overflowed and backend.received == 3 * len(half)


def test_a_client_the_program_did_not_see_connect_is_not_joined() -> None:
    """A client of another host never meets the program; one that connected before it was
    attached stands in for it here. mysqld's end is then let go."""
    gate, mysqld = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    app = socket.create_connection(gate.getsockname())
    kernel = KernelForwarder.create(gate.getsockname()[1], mysqld.getsockname()[1], 16)
    try:
        client_side, _ = gate.accept()
        backend_side = socket.socket()
        backend_side.bind(("127.0.0.1", 0))
        kernel.announce(backend_side.getsockname())
        backend_side.connect(mysqld.getsockname())
        server, _ = mysqld.accept()
        link = Link(app, client_side, backend_side, server)
        mysqld_key = _key(server)
        assert kernel.holds(mysqld_key)
        assert kernel.join(*link.ends(), link.cookies(), EPOCH) is None
        assert not kernel.holds(mysqld_key)
        link.app.sendall(b"ping")
        assert receive_exactly(link.client_side, 4) == b"ping"  # the worker's, as always
        link.close()
    finally:
        kernel.close()
        gate.close()
        mysqld.close()


def _key(sock: socket.socket) -> bytes:
    return socket_key(sock.getsockname(), sock.getpeername())


def test_only_announced_connections_to_mysqld_are_kept(lab: Lab) -> None:
    link = lab.connect(announce=False)  # e.g. a replica or a monitoring tool connecting directly
    try:
        assert not lab.kernel.holds(_key(link.server))
        assert lab.kernel.holds(_key(link.app))
    finally:
        link.close()


NETNS_CLIENT = """
import socket, sys, time
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
client = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print(*client.getsockname(), *client.getpeername(), flush=True)
sys.stdin.read()
"""


def test_a_client_in_another_network_namespace_is_not_kept(lab: Lab) -> None:
    """Namespaces reuse addresses: a socket elsewhere with the same four-tuple is not the one."""
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace needs root")
    name = f"dbfence-t{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        port = lab.gate.getsockname()[1]
        command = ["ip", "netns", "exec", name, sys.executable, "-c", NETNS_CLIENT, str(port)]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert process.stdout is not None
            local_ip, local_port, remote_ip, remote_port = process.stdout.readline().split()
            key = socket_key((local_ip, int(local_port)), (remote_ip, int(remote_port)))
            assert not lab.kernel.holds(key)
            link = lab.connect()  # the same program keeps a client of its own namespace
            assert lab.kernel.holds(_key(link.app))
            link.close()
        finally:
            process.kill()
            process.wait(10)
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def test_forgotten_links_go_over_tcp_again(lab: Lab, link: Link) -> None:
    joined = lab.join(link)
    lab.kernel.forget(joined)
    assert lab.kernel.counters(joined.cookies[0]) is None
    link.app.sendall(b"tcp")
    assert receive_exactly(link.client_side, 3) == b"tcp"
    lab.kernel.forget(joined)  # twice is harmless


OWNER = """
import signal, sys
from dbfence.breaker.kernel import KernelForwarder
kernel = KernelForwarder.create(int(sys.argv[1]), int(sys.argv[2]), 4)
print(*kernel.program_ids(), flush=True)
signal.pause()
"""


def test_the_programs_go_away_with_the_process_that_loaded_them() -> None:
    """A killed agent must not leave a program on the host's root cgroup."""
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    owner = subprocess.Popen([sys.executable, "-c", OWNER, "40001", "40002"], stdout=subprocess.PIPE, env=env)
    try:
        assert owner.stdout is not None
        ids = [int(field) for field in owner.stdout.readline().split()]
        assert len(ids) == 2 and all(program_exists(identifier) for identifier in ids)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
    wait_until(lambda: not any(map(program_exists, ids)), 10, "the programs to be freed")


class _Quiet(asyncio.Protocol):
    pass


@pytest.mark.parametrize("client_speaks_early", [False, True], ids=["client-waits", "client-speaks-early"])
def test_the_worker_joins_a_link_only_if_no_byte_could_be_overtaken(
    lab: Lab, client_speaks_early: bool
) -> None:
    """At the login OK the worker joins the link, unless a byte waits unread in one of its sockets
    (a client that did not wait for the OK): the kernel could deliver a later one first. Driven
    directly, with real sockets, so which of two ready sockets the loop serves first does not
    decide the case."""
    made = lab.connect()
    shared = SharedRecord.create()
    control, agent_end = socket.socketpair()
    loop = asyncio.new_event_loop()
    try:
        worker = Worker(GateConfig(listen_port=0), 0, shared, control, 0, loop, lab.kernel)
        link = ClientSide(worker)
        for sock in (made.client_side, made.backend_side):
            sock.setblocking(False)
        client_transport, _ = loop.run_until_complete(loop.connect_accepted_socket(_Quiet, made.client_side))
        backend_transport, _ = loop.run_until_complete(
            loop.connect_accepted_socket(_Quiet, made.backend_side)
        )
        link.transport, link.backend_transport = client_transport, backend_transport
        link.fd, link.backend_fd, link.epoch = made.client_side.fileno(), made.backend_side.fileno(), EPOCH
        if client_speaks_early:
            made.app.sendall(b"early")
            wait_until(lambda: not nothing_waiting(made.client_side), 5, "the early bytes to arrive")
        worker.watch_login(link, LOGIN_OK)
        assert link.logging_in is False
        if client_speaks_early:
            assert link.joined is None and worker.kernel_refusals == 1
            assert made.client_side.recv(5) == b"early"  # still the worker's to forward
        else:
            assert link.joined is not None and worker.handed_to_kernel == 1
            made.app.sendall(b"query")
            assert receive_exactly(made.server, 5) == b"query"  # the kernel delivers it
        client_transport.abort()
        backend_transport.abort()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
        for sock in (made.app, made.server, control, agent_end):
            sock.close()
        shared.close()

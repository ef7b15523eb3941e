"""A gate worker process: what :class:`dbfence.breaker.gate.Gate` starts (forked from the agent,
see :mod:`dbfence.breaker.spawn`, then :func:`main`).

It listens on the shared port (``SO_REUSEPORT``), runs a :class:`dbfence.breaker.worker.Worker` on
uvloop, and dies with the agent: the kernel kills it when the agent's spawning thread exits
(``PR_SET_PDEATHSIG``), and the worker's tick also checks ``getppid`` (every ``idle_tick`` while it
holds no link, every ``tick`` while it does). A control socket from the
agent wakes it up for blocks, drains, status requests and shutdown.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import resource
import signal
import socket
from typing import Final

import uvloop

from dbfence.breaker.config import GateConfig
from dbfence.breaker.kernel import KernelForwarder
from dbfence.breaker.shared import SharedRecord, WorkerSlot
from dbfence.breaker.worker import CTL_READY, Worker

PR_SET_PDEATHSIG: Final = 1
_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(parent_pid: int) -> None:
    if _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the agent died before prctl took effect
        os._exit(1)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


async def _serve(config: GateConfig, index: int, shared: SharedRecord, control: socket.socket,
                 parent_pid: int, inbox: socket.socket, peers: list[socket.socket],
                 kernel: KernelForwarder | None) -> None:
    loop = asyncio.get_running_loop()
    worker = Worker(config, index, shared, control, parent_pid, loop, kernel)
    shared.write_slot(index, WorkerSlot(os.getpid(), 0, 0, 0, 0))
    sock = listening_socket(config.listen_host, config.listen_port)
    sock.listen(4096)
    sock.setblocking(False)
    worker.listener = sock
    worker.inbox = inbox
    worker.peers = peers
    inbox.setblocking(False)
    loop.add_reader(sock.fileno(), worker.on_listener_readable)
    loop.add_reader(inbox.fileno(), worker.on_handoff_readable)
    control.setblocking(False)
    loop.add_reader(control.fileno(), worker.on_control)
    worker.start_ticking()
    control.setblocking(True)
    control.sendall(CTL_READY)
    control.setblocking(False)
    await worker.stopping.wait()
    loop.remove_reader(control.fileno())
    loop.remove_reader(inbox.fileno())


def main(argv: list[str]) -> int:
    config_json, index_text, shared_fd, control_fd, parent_pid, inbox_fd, peer_fds, kernel_fds = argv
    _die_with_parent(int(parent_pid))
    _raise_fd_limit()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the agent, which stops us
    config = GateConfig.from_json(config_json)
    shared = SharedRecord(int(shared_fd))
    control = socket.socket(fileno=int(control_fd))
    inbox = socket.socket(fileno=int(inbox_fd))
    peers = [socket.socket(fileno=int(fd)) for fd in peer_fds.split(",")]
    kernel = None
    if kernel_fds:
        fence_fd, links_fd, sockets_fd, routes_fd, announced_fd = (int(fd) for fd in kernel_fds.split(","))
        kernel = KernelForwarder(fence_fd, links_fd, sockets_fd, routes_fd, announced_fd)
    uvloop.run(_serve(config, int(index_text), shared, control, int(parent_pid), inbox, peers, kernel))
    return 0

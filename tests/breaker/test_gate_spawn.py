"""Workers are forked from the agent (issue 18: a fresh interpreter each cost ~14 MB PSS): they
share the agent's pages, keep none of its other descriptors, run none of its signal handlers."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from dbfence.breaker.config import GateConfig
from dbfence.breaker.gate import Gate
from dbfence.lab.echo import EchoBackend
from tests.breaker.waiting import wait_until


@pytest.fixture
def echo() -> Iterator[EchoBackend]:
    with EchoBackend() as backend:
        yield backend


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:"):
            inodes.add(target)
    return inodes


def test_a_worker_keeps_none_of_the_agents_descriptors(echo: EchoBackend) -> None:
    # Something of the agent's own that a worker must not hold: a listener (the HTTP API, say).
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    inode = os.readlink(f"/proc/self/fd/{listener.fileno()}")
    with Gate(GateConfig(listen_port=0, backend_port=echo.port, workers=2)) as gate:
        gate.admit(time.monotonic() + 60)
        for pid in gate.worker_pids():
            assert psutil.Process(pid).ppid() == os.getpid()
            assert psutil.Process(pid).name() == f"dbfence-gate-{gate.worker_pids().index(pid)}"
            assert inode not in _socket_inodes(pid)
        listener.close()
        # Closed here, the port is free at once: no worker holds a copy.
        socket.create_server(("127.0.0.1", port)).close()
        with socket.create_connection(("127.0.0.1", gate.port)) as client:
            client.sendall(b"hi")
            assert client.recv(8) == b"hi"


def test_the_agents_signal_handlers_do_not_run_in_a_worker(echo: EchoBackend, tmp_path: Path) -> None:
    marker = tmp_path / "handler-ran"

    def agent_handler(signum: int, frame: object) -> None:
        marker.write_text(str(os.getpid()))

    previous = signal.signal(signal.SIGUSR1, agent_handler)
    try:
        with Gate(GateConfig(listen_port=0, backend_port=echo.port, workers=1)) as gate:
            [worker] = gate.worker_pids()
            os.kill(worker, signal.SIGUSR1)  # default action: the worker ends
            wait_until(lambda: gate._workers[0].process.poll() is not None, 5, "the worker to end")
            assert gate._workers[0].process.returncode == -signal.SIGUSR1
            assert not marker.exists()
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_forked_workers_share_the_agents_pages(echo: EchoBackend) -> None:
    with Gate(GateConfig(listen_port=0, backend_port=echo.port, workers=2)) as gate:
        for pid in gate.worker_pids():
            memory = psutil.Process(pid).memory_full_info()
            # A fresh interpreter with the worker's imports has ~14 MB of its own.
            assert memory.uss < 0.5 * memory.rss, memory

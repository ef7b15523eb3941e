"""A worker that holds no connection sleeps (issue 18, the agent's idle cost), and the fence stays
as strong: a link admitted after a long sleep is still cut at the deadline without sending a byte.
The loop's per-round open count is read without waking the workers."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from dbfence.breaker.config import GateConfig
from dbfence.breaker.gate import Gate
from dbfence.breaker.kernel import probe
from dbfence.lab.echo import LOGIN_OK, EchoBackend
from tests.breaker.waiting import receive_exactly, wait_until


def _kernel_setting(forwarding: str) -> str:
    if forwarding == "kernel" and (missing := probe()) is not None:
        pytest.skip(f"this host cannot forward in the kernel: {missing}")
    return "on" if forwarding == "kernel" else "off"


def _context_switches(pid: int) -> int:
    """Times the worker went to sleep or was preempted: each wake-up of its loop is at least one."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["voluntary_ctxt_switches"]) + int(fields["nonvoluntary_ctxt_switches"])


def _wakeups_over(pid: int, seconds: float) -> int:
    before = _context_switches(pid)
    time.sleep(seconds)  # a measurement window, not synchronisation
    return _context_switches(pid) - before


def _open_link(port: int, login: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    if login:  # the stand-in mysqld's login OK: on the kernel path the link is joined there
        sock.sendall(b"login")
        assert receive_exactly(sock, len(LOGIN_OK)) == LOGIN_OK
    sock.sendall(b"ping")  # a round trip through the backend proves the link is up
    assert receive_exactly(sock, 4) == b"ping"
    return sock


@pytest.mark.parametrize("forwarding", ["worker", "kernel"])
def test_a_worker_without_links_sleeps_and_sleeps_again_after_its_last_link(forwarding: str) -> None:
    config = GateConfig(listen_port=0, workers=1, kernel_forwarding=_kernel_setting(forwarding))
    assert config.tick == 0.02 and config.idle_tick == 1.0  # the defaults measured here
    kernel = forwarding == "kernel"
    with EchoBackend(login_ok=kernel) as backend, Gate(replace(config, backend_port=backend.port)) as gate:
        gate.admit(time.monotonic() + 120)
        [pid] = gate.worker_pids()
        # A 20 ms tick would be ~100 wake-ups in 2 s; sleeping on its sockets, about 2.
        assert _wakeups_over(pid, 2.0) <= 10
        link = _open_link(gate.port, login=kernel)
        try:
            # While it holds a link the worker ticks fast (the deadline must cut an idle link).
            assert _wakeups_over(pid, 1.0) >= 20
        finally:
            link.close()
        wait_until(lambda: gate.stats().open_connections == 0, 10, "the link to end")
        wait_until(lambda: _wakeups_over(pid, 2.0) <= 10, 20, "the worker to sleep again", interval=0)


@pytest.mark.parametrize("forwarding", ["worker", "kernel"])
def test_a_link_admitted_by_a_sleeping_worker_is_cut_at_the_deadline(forwarding: str) -> None:
    # idle_tick 600 s: if admitting a link did not bring the fast tick back, nothing would cut
    # this silent link until long after the deadline.
    config = GateConfig(listen_port=0, workers=1, idle_tick=600.0,
                        kernel_forwarding=_kernel_setting(forwarding))
    kernel = forwarding == "kernel"
    with EchoBackend(login_ok=kernel) as backend, Gate(replace(config, backend_port=backend.port)) as gate:
        deadline = time.monotonic() + 1.5
        gate.admit(deadline)
        link = _open_link(gate.port, login=kernel)
        try:
            assert time.monotonic() < deadline, "the link must be admitted before the deadline"
            poller = select.poll()
            poller.register(link, select.POLLIN | select.POLLRDHUP)
            assert poller.poll(10_000), "the link was not cut within 10 s"
            cut_after = time.monotonic() - deadline
            assert cut_after >= 0, "cut before the deadline"
            assert cut_after < 1.0, f"cut {cut_after:.2f} s after the deadline"
            link.setblocking(False)
            with contextlib.suppress(ConnectionResetError):
                assert link.recv(16) == b""
        finally:
            link.close()


def test_the_open_count_is_read_without_waking_the_workers() -> None:
    """The decision loop reads the open count every round: from the workers' shared slots, never
    by asking them (a report wakes each worker, as the control shows)."""
    config = GateConfig(listen_port=0, workers=2, kernel_forwarding="off")
    with EchoBackend() as backend, Gate(replace(config, backend_port=backend.port)) as gate:
        gate.admit(time.monotonic() + 120)
        links = [_open_link(gate.port, login=False) for _ in range(3)]
        try:
            wait_until(lambda: gate.open_connections() == 3, 10, "three links to count")
            assert gate.stats().open_connections == 3
            links.pop().close()
            wait_until(lambda: gate.open_connections() == 2, 10, "a closed link to leave the count")
        finally:
            for link in links:
                link.close()
        wait_until(lambda: gate.open_connections() == 0, 10, "the last links to leave the count")
        pids = gate.worker_pids()
        wait_until(lambda: max(_wakeups_over(pid, 1.0) for pid in pids) <= 5, 20, "the workers to sleep",
                   interval=0)

        def wakeups_while(read: Callable[[], object]) -> int:
            before = [_context_switches(pid) for pid in pids]
            for _ in range(50):  # what 10 s of rounds at 5 a second would read
                read()
            time.sleep(0.2)  # the last replies' wake-ups are counted too
            return min(_context_switches(pid) - b for pid, b in zip(pids, before, strict=True))

        assert wakeups_while(gate.open_connections) <= 5
        assert wakeups_while(gate.stats) >= 50  # the control: each report wakes every worker

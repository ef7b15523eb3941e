"""A real agent process under a fake systemd: READY once it has decided, WATCHDOG pings from its
loop that keep coming while the DCS is frozen (a slow DCS must not get a healthy agent killed),
and STOPPING on SIGTERM."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbfence.lab.wait import wait_until
from tests.conftest import LabFactory


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET: keeps every datagram with the time it arrived."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.received: list[tuple[float, str]] = []

    def drain(self) -> list[tuple[float, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.received
            self.received.append((time.monotonic(), data.decode()))

    def lines(self, prefix: str, since: float = 0.0) -> list[float]:
        return [at for at, line in self.drain() if at >= since and line.startswith(prefix)]


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    systemd = FakeSystemd(tmp_path / "notify.sock")
    try:
        yield systemd
    finally:
        systemd.sock.close()


def test_agent_notifies_ready_pings_through_a_frozen_dcs_and_says_stopping(
    lab_factory: LabFactory, fake_systemd: FakeSystemd
) -> None:
    lab = lab_factory(mysql_count=2, dcs="etcd", etcd_members=1, agents=True)
    [primary] = wait_until(lab.primaries, timeout=30, what="a primary")
    replica = next(a for a in lab.agents if a.name != primary)
    # Run the replica's agent ourselves, as systemd would: same config, the notify variables set.
    lab.kill_agent(replica.name, signal.SIGTERM)
    wait_until(lambda: not replica.process.alive(), timeout=15, what="the lab's agent to stop")
    env = dict(os.environ, NOTIFY_SOCKET=fake_systemd.path, WATCHDOG_USEC="2000000",
               WATCHDOG_PID="")
    with open(Path(replica.log), "ab") as log:
        agent = subprocess.Popen([sys.executable, "-m", "dbfence", "agent", "--config", replica.config],
                                 env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: fake_systemd.lines("READY=1"), timeout=20, what="READY=1 from the agent")
        ready_line = next(line for _, line in fake_systemd.received if line.startswith("READY=1"))
        assert "STATUS=" in ready_line, ready_line  # the role is shown in `systemctl status`

        # Freeze the DCS: renewals and reads hang, yet the loop keeps going and keeps pinging.
        frozen_at = time.monotonic()
        lab.kill_etcd("etcd1", signal.SIGSTOP)
        try:
            wait_until(lambda: len(fake_systemd.lines("WATCHDOG=1", since=frozen_at + 3.0)) >= 3,
                       timeout=15, what="watchdog pings while etcd is frozen")
        finally:
            lab.kill_etcd("etcd1", signal.SIGCONT)
        pings = fake_systemd.lines("WATCHDOG=1", since=frozen_at)
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        # WatchdogSec would be 2 s here: no gap may reach it.
        assert max(gaps) < 2.0, gaps

        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=20) == 0
        assert fake_systemd.lines("STOPPING=1")
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(timeout=10)

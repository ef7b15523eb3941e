"""sd_notify against a fake NOTIFY_SOCKET: what systemd would receive, byte for byte."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbfence.config import load_config
from dbfence.sdnotify import Notifier


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        yield sock, path
    finally:
        sock.close()


def test_ready_with_status_is_one_datagram(fake_systemd: tuple[socket.socket, str]) -> None:
    sock, path = fake_systemd
    assert Notifier(path).ready("primary, token 42")
    assert sock.recv(4096) == b"READY=1\nSTATUS=primary, token 42"


def test_watchdog_and_stopping(fake_systemd: tuple[socket.socket, str]) -> None:
    sock, path = fake_systemd
    notifier = Notifier(path)
    assert notifier.watchdog() and notifier.stopping()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert sock.recv(4096) == b"STOPPING=1"


def test_abstract_socket_address() -> None:
    name = f"dbfence-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert Notifier("@" + name).status("replica")
        assert sock.recv(4096) == b"STATUS=replica"


def test_without_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled and not notifier.ready()


def test_unreachable_socket_is_reported_not_raised(tmp_path: Path) -> None:
    assert Notifier(str(tmp_path / "gone.sock")).watchdog() is False


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier("x").watchdog_interval() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert Notifier("x").watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert Notifier("x").watchdog_interval() is None


def test_units_and_sample_config_are_consistent() -> None:
    root = Path(__file__).resolve().parents[2] / "systemd"
    single = (root / "dbfence.service").read_text()
    template = (root / "dbfence@.service").read_text()
    for unit in (single, template):
        for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=dbfence",
                     "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                     # Without it the gate's bpf(2) probe, outside @system-service, kills the agent.
                     "SystemCallErrorNumber=EPERM"):
            assert line in unit
    assert "--config /etc/dbfence/%i.toml" in template
    assert load_config(root / "dbfence.toml").cluster.name == "orders"

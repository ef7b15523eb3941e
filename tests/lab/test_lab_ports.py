"""Ports for lab servers: outside the kernel's ephemeral range (an outgoing connection's source
port took an etcd member's port before it bound it, in a full run), never the same one twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbfence.lab import procs
from dbfence.lab.procs import free_port


def test_lab_ports_are_below_the_ephemeral_range_and_never_handed_out_twice() -> None:
    floor = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(300)]
    assert all(port < floor for port in ports), [p for p in ports if p >= floor]
    assert len(set(ports)) == len(ports)


def test_a_port_range_from_the_environment_narrows_the_lab_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(procs.PORTS_ENV, "21000-21099")
    ports = [free_port() for _ in range(20)]
    assert all(21000 <= port <= 21099 for port in ports), ports
    monkeypatch.setenv(procs.PORTS_ENV, "nonsense")  # the default range, not an error
    assert procs._LISTEN_PORTS.start <= free_port() < procs._LISTEN_PORTS.stop

"""Ports for lab servers: outside the kernel's ephemeral range (an outgoing connection's source
port took an etcd member's port before it bound it, in a full run), never the same one twice."""

from __future__ import annotations

from pathlib import Path

from dbfence.lab.procs import free_port


def test_lab_ports_are_below_the_ephemeral_range_and_never_handed_out_twice() -> None:
    floor = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(300)]
    assert all(port < floor for port in ports), [p for p in ports if p >= floor]
    assert len(set(ports)) == len(ports)

"""A real ``consul agent -dev`` for the contract tests, when a ``consul`` binary is on PATH."""

from __future__ import annotations

import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from dbfence.lab.procs import ProcessRef, free_port, port_open, spawn, stop
from dbfence.lab.wait import wait_until


@dataclass
class RealConsul:
    http_address: str
    dns_address: str
    process: ProcessRef

    @property
    def dns_port(self) -> int:
        return int(self.dns_address.rsplit(":", 1)[1])

    def stop(self) -> None:
        stop(self.process, grace=10.0)


def start_real_consul(directory: Path) -> RealConsul:
    """Start ``consul agent -dev`` on loopback ports of its own; skips the test when there is no binary."""
    binary = shutil.which("consul")
    if binary is None:
        pytest.skip("no `consul` binary on PATH: the real-Consul run of the contract suite needs one")
    http_port, dns_port = free_port(), free_port()
    ports = (
        f"ports {{ http = {http_port}, dns = {dns_port}, server = {free_port()}, "
        f"serf_lan = {free_port()}, serf_wan = -1, grpc = -1 }}"
    )
    argv = [binary, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
            "-data-dir", str(directory / "data"), "-hcl", ports]
    server = RealConsul(f"127.0.0.1:{http_port}", f"127.0.0.1:{dns_port}",
                        spawn(argv, directory / "consul.log"))
    try:
        wait_until(lambda: port_open("127.0.0.1", http_port), timeout=30, what="consul agent -dev")
        # Before a raft leader exists, KV writes and sessions fail.
        wait_until(lambda: _has_leader(server.http_address), timeout=30, what="a Consul leader")
    except BaseException:
        server.stop()
        raise
    return server


def _has_leader(address: str) -> bool:
    with urllib.request.urlopen(f"http://{address}/v1/status/leader", timeout=1.0) as response:
        return len(response.read().strip()) > 2

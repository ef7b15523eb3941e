"""The Consul stand-in as a lab server: started as its own process, recorded by pid.

The lab's counterpart of :mod:`dbfence.lab.etcd_servers` for ``--dcs consul``; the stand-in itself
is :mod:`dbfence.lab.consul_standin`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from dbfence.lab.procs import ProcessRef, free_port, spawn


@dataclass(frozen=True, slots=True)
class ConsulStandinProcess:
    http_address: str
    dns_address: str
    pid: int
    create_time: float

    @property
    def process(self) -> ProcessRef:
        return ProcessRef(self.pid, self.create_time)


def start_consul_standin(directory: Path, host: str, argv_prefix: list[str]) -> ConsulStandinProcess:
    http_address = f"{host}:{free_port()}"
    dns_address = f"{host}:{free_port()}"
    consul_dir = directory / "consul"
    consul_dir.mkdir(parents=True, exist_ok=True)
    ref = spawn([*argv_prefix, sys.executable, "-m", "dbfence.lab.consul_standin",
                 "--http-addr", http_address, "--dns-addr", dns_address], consul_dir / "standin.log")
    return ConsulStandinProcess(http_address, dns_address, ref.pid, ref.create_time)

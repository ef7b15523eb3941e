"""What the gate reports about itself: its state, its workers, its links (``Gate.stats``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ConnectionInfo:
    worker: int
    client: str
    age: float
    idle: float
    bytes_in: int
    bytes_out: int
    queries: int
    # "kernel" (joined after the login), "worker", "kernel+worker" (over budget), or "remote-kernel"
    # (a client of another host forwarded by the kernel: worker -1, no byte counts).
    forwarding: str


@dataclass(frozen=True)
class WorkerStats:
    index: int
    pid: int
    responding: bool
    open_connections: int
    accepted: int
    refused: int
    cut: int
    refused_full: int = 0  # of ``refused``: at the backend cap (ERR 1040)
    login_timeouts: int = 0  # dropped for not logging in within login_timeout
    spoofed_headers: int = 0  # cut for sending a PROXY protocol header of their own
    # Bytes its links moved (in the worker and, once joined, in the kernel), since it started:
    # client to mysqld, and mysqld to client. Forwarded remote flows are not counted.
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass(frozen=True)
class GateStats:
    state: str  # "admitting", "draining" or "blocking"
    reason: str  # why blocked; empty while admitting
    deadline_in: float | None  # seconds of lease left while admitting
    epoch: int
    open_connections: int
    workers: tuple[WorkerStats, ...]
    connections: tuple[ConnectionInfo, ...]
    kernel_forwarding: str  # "on", or "off: why"
    backend_cap: int = 0  # backend connections the workers may hold together
    backend_connections: int = 0  # held now
    refused_full: int = 0  # clients refused at the cap (ERR 1040), since start
    login_timeouts: int = 0  # clients dropped for not logging in in time, since start
    spoofed_headers: int = 0  # clients cut for sending a PROXY protocol header, since start
    remote_path: str = "off: remote_path = off"  # "on: interfaces", or "off: why"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernel_forwarding": self.kernel_forwarding,
            "remote_path": self.remote_path,
            "backend_cap": self.backend_cap,
            "backend_connections": self.backend_connections,
            "refused_full": self.refused_full,
            "login_timeouts": self.login_timeouts,
            "spoofed_headers": self.spoofed_headers,
            "state": self.state,
            "reason": self.reason,
            "deadline_in": self.deadline_in,
            "epoch": self.epoch,
            "open_connections": self.open_connections,
            "workers": [vars(worker) for worker in self.workers],
            "connections": [vars(connection) for connection in self.connections],
        }


@dataclass(frozen=True)
class DrainResult:
    closed_gracefully: int
    cut: int
    seconds: float

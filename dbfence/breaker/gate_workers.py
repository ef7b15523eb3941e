"""The agent's end of the gate's worker processes: fork them, wait until they listen, poke them,
and ask them for their counts over their control sockets.

Kept apart from ``gate.py``, which owns the fence and the state machine: this is the plumbing of
one control socket per worker (a line protocol of one-byte commands and JSON reports), which the
fence never waits for. A worker that does not answer is reported as such; the fence word alone
keeps it from forwarding.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import time
from dataclasses import dataclass
from typing import Any

from dbfence.breaker.config import GateConfig
from dbfence.breaker.shared import SharedRecord
from dbfence.breaker.spawn import WorkerProcess, fork_worker
from dbfence.breaker.stats import ConnectionInfo, WorkerStats
from dbfence.breaker.worker import CTL_READY, CTL_STATS

_START_TIMEOUT = 15.0
_STATS_TIMEOUT = 2.0


class GateError(Exception):
    """The gate could not start or was used in the wrong order."""


@dataclass
class WorkerHandle:
    index: int
    process: WorkerProcess
    control: socket.socket
    buffer: bytes = b""
    requests: int = 0


@dataclass(frozen=True)
class WorkerReports:
    """What the workers said about themselves, summed for the gate's status."""

    workers: list[WorkerStats]
    connections: list[ConnectionInfo]
    refused_full: int
    login_timeouts: int
    spoofed_headers: int


def spawn_worker(
    config: GateConfig,
    index: int,
    shared: SharedRecord,
    inbox: socket.socket,
    senders: list[socket.socket],
    kernel_fds: tuple[int, ...],
) -> WorkerHandle:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    argv = [
        config.to_json(),
        str(index),
        str(shared.fd),
        str(theirs.fileno()),
        str(os.getpid()),
        str(inbox.fileno()),
        ",".join(str(sender.fileno()) for sender in senders),
        ",".join(str(fd) for fd in kernel_fds),
    ]
    fds = (shared.fd, theirs.fileno(), inbox.fileno(), *(s.fileno() for s in senders), *kernel_fds)
    process = fork_worker(argv, fds, f"dbfence-gate-{index}")
    theirs.close()
    return WorkerHandle(index, process, ours)


def await_ready(handle: WorkerHandle) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while CTL_READY not in handle.buffer:
        left = deadline - time.monotonic()
        if left <= 0 or handle.process.poll() is not None:
            code = handle.process.poll()
            raise GateError(f"gate worker {handle.index} did not start (exit code {code})")
        readable, _, _ = select.select([handle.control], [], [], min(left, 0.2))
        if readable:
            chunk = handle.control.recv(4096)
            if not chunk:
                raise GateError(f"gate worker {handle.index} closed its control socket while starting")
            handle.buffer += chunk
    handle.buffer = handle.buffer.split(CTL_READY, 1)[1]


def poke(handle: WorkerHandle, command: bytes) -> None:
    # A stopped or dead worker may not take the poke: the fence word alone keeps it from forwarding.
    with contextlib.suppress(OSError):
        handle.control.send(command, socket.MSG_DONTWAIT)


def collect_reports(handles: list[WorkerHandle], shared: SharedRecord) -> WorkerReports:
    """Ask every worker for its report (one round trip each) and sum them; a worker that does
    not answer counts with the open connections of its shared slot."""
    reports = [ask_stats(handle) for handle in handles]
    workers: list[WorkerStats] = []
    connections: list[ConnectionInfo] = []
    refused_full = login_timeouts = spoofed_headers = 0
    for handle, report in zip(handles, reports, strict=True):
        if report is None:
            slot = shared.read_slot(handle.index)
            workers.append(
                WorkerStats(handle.index, handle.process.pid, False, slot.open_connections, 0, 0, 0)
            )
            continue
        refused_full += int(report.get("refused_full", 0))
        login_timeouts += int(report.get("login_timeouts", 0))
        spoofed_headers += int(report.get("spoofed_headers", 0))
        workers.append(
            WorkerStats(
                handle.index,
                int(report["pid"]),
                True,
                int(report["open"]),
                int(report["accepted"]),
                int(report["refused"]),
                int(report["cut"]),
                int(report.get("refused_full", 0)),
                int(report.get("login_timeouts", 0)),
                int(report.get("spoofed_headers", 0)),
                int(report.get("bytes_in", 0)),
                int(report.get("bytes_out", 0)),
            )
        )
        for row in report["connections"]:
            connections.append(
                ConnectionInfo(
                    handle.index,
                    str(row["client"]),
                    float(row["age"]),
                    float(row["idle"]),
                    int(row["bytes_in"]),
                    int(row["bytes_out"]),
                    int(row["queries"]),
                    str(row.get("forwarding", "worker")),
                )
            )
    return WorkerReports(workers, connections, refused_full, login_timeouts, spoofed_headers)


def ask_stats(handle: WorkerHandle) -> dict[str, Any] | None:
    """One round trip; replies to earlier requests that timed out are recognised and skipped."""
    handle.requests += 1
    wanted = handle.requests
    try:
        handle.control.sendall(CTL_STATS)
    except OSError:
        return None
    deadline = time.monotonic() + _STATS_TIMEOUT
    while True:
        while b"\n" in handle.buffer:
            line, handle.buffer = handle.buffer.split(b"\n", 1)
            try:
                report: dict[str, Any] = json.loads(line)
            except ValueError:
                continue  # not a report: ignore it rather than fail the status call
            if int(report.get("request", 0)) == wanted:
                return report
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        readable, _, _ = select.select([handle.control], [], [], left)
        if not readable:
            return None
        try:
            chunk = handle.control.recv(1 << 16)
        except OSError:
            return None
        if not chunk:
            return None
        handle.buffer += chunk

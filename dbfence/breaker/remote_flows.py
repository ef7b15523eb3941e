"""The remote path's flow records and the mysqld sockets behind them.

The filter (:mod:`dbfence.breaker.remote_filter`) records each remote client's flow in a BPF hash
map at its SYN. This module reads those records, destroys mysqld's end of admitted flows (``ss -K``:
the kernel sends the client an RST), finds which peers still have a socket, and removes the filter
an earlier agent on the same port left attached, after destroying the flows it admitted.
:mod:`dbfence.breaker.passthrough` runs the path itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from dbfence.breaker.bpf import (
    ATTACH_TCX_EGRESS,
    ATTACH_TCX_INGRESS,
    PROG_DETACH,
    attached_programs,
    bpf,
    map_by_id,
    map_lookup,
    map_next_key,
    program_by_id,
    program_info,
)
from dbfence.breaker.remote_filter import (
    FLOW_KEY,
    FLOW_VALUE,
    MODE_PASSTHROUGH,
    SEEN_FIN_IN,
    SEEN_FIN_OUT,
    SEEN_RST,
)

log = logging.getLogger(__name__)

_DESTROY_BATCH: Final = 100


class RemotePathUnavailable(OSError):
    """This host cannot run the remote path (privileges, kernel, tools, configuration)."""


def bpf_refused(error: OSError, doing: str) -> RemotePathUnavailable:
    """Why a bpf(2) call failed. The capabilities are checked before any call, so EPERM is a
    system-call filter's answer (systemd's @system-service set leaves bpf out)."""
    hint = (" (the agent has CAP_BPF, so a system-call filter refused bpf(2): the unit's "
            "SystemCallFilter needs `bpf`)" if error.errno == errno.EPERM else "")
    return RemotePathUnavailable(error.errno, f"{doing}: {error.strerror}{hint}")


@dataclass(frozen=True)
class Flow:
    """One remote client's connection as the filter recorded it at its SYN."""

    client: tuple[str, int]
    local: tuple[str, int]
    passthrough: bool  # forwarded by the kernel; False: the SYN went to a worker (fence closed)
    epoch: int
    idle: float  # seconds since its last packet passed (since its SYN for a worker's flow)
    closing: bool  # a FIN both ways or an RST was seen


def run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=10, check=False)


def _ip(value: int) -> str:
    return socket.inet_ntoa(struct.pack("=I", value))


def _port(wire: int) -> int:
    return int(struct.unpack("!H", struct.pack("<H", wire))[0])


def flows_of(flows_fd: int, value: ctypes.Array[ctypes.c_char]) -> Iterator[tuple[bytes, Flow]]:
    """Every flow the map holds, with its key (``value`` is the lookup's buffer)."""
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    walked: set[bytes] = set()
    key = map_next_key(flows_fd, None, FLOW_KEY.size)
    while key is not None and key not in walked:  # a key deleted meanwhile restarts the walk: stop
        walked.add(key)
        following = map_next_key(flows_fd, key, FLOW_KEY.size)
        try:
            map_lookup(flows_fd, key, value)
        except FileNotFoundError:
            key = following
            continue
        client_ip, local_ip, client_port, local_port, _ = FLOW_KEY.unpack(key)
        epoch, mode, last_ns, seen = FLOW_VALUE.unpack(value.raw)
        closing = bool(seen & SEEN_RST) or (seen & (SEEN_FIN_IN | SEEN_FIN_OUT)) == SEEN_FIN_IN | SEEN_FIN_OUT
        yield key, Flow((_ip(client_ip), _port(client_port)), (_ip(local_ip), _port(local_port)),
                        mode == MODE_PASSTHROUGH, int(epoch), max(0.0, (now - last_ns) / 1e9), closing)
        key = following


def destroy_backend_sockets(backend_port: int, clients: list[tuple[str, int]]) -> None:
    """Abort mysqld's sockets of these client addresses (the kernel sends each client an RST)."""
    for start in range(0, len(clients), _DESTROY_BATCH):
        batch = clients[start : start + _DESTROY_BATCH]
        peers = " or ".join(f"dst {ip}:{port}" for ip, port in batch)
        done = run(["ss", "-K", "-tn", "state", "connected", f"sport = :{backend_port} and ( {peers} )"])
        if done.returncode != 0:
            log.warning("remote path: ss -K failed: %s", done.stderr.strip())


def peers_on_ports(ports: tuple[int, ...]) -> set[tuple[str, int]]:
    """The peers of this namespace's TCP sockets whose local port is one of ``ports``."""
    done = run(["ss", "-tnH", "state", "all"])
    peers: set[tuple[str, int]] = set()
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        local, peer = fields[3], fields[4]
        try:
            local_port = int(local.rsplit(":", 1)[1])
            peer_ip, peer_port = peer.rsplit(":", 1)
            if local_port in ports:
                peers.add((peer_ip.strip("[]"), int(peer_port)))
        except (IndexError, ValueError):
            continue
    return peers


def remove_stale(gate_port: int, interfaces: list[str], backend_port: int) -> int:
    """Detach the filter an earlier agent on this port left attached, after destroying the flows it
    admitted (it is what keeps them fenced). Returns how many programs were detached."""
    names = {f"dbf_rin_{gate_port}", f"dbf_rout_{gate_port}"}
    stale: list[tuple[int, int, int]] = []
    for interface in interfaces:
        try:
            ifindex = socket.if_nametoindex(interface)
        except OSError:
            continue
        for attach_type in (ATTACH_TCX_INGRESS, ATTACH_TCX_EGRESS):
            try:
                ids = attached_programs(ifindex, attach_type)
            except OSError as error:
                raise bpf_refused(error, "cannot query the tcx hooks (Linux 6.6+)") from None
            for identifier in ids:
                try:
                    fd = program_by_id(identifier)
                except FileNotFoundError:
                    continue
                except PermissionError:
                    # Without CAP_SYS_ADMIN the kernel gives no descriptor of a program this
                    # process did not load: an earlier agent's filter could not be told apart,
                    # nor its flows cut, nor itself detached.
                    for _, _, found in stale:
                        os.close(found)
                    raise RemotePathUnavailable(
                        errno.EPERM, f"a program (id {identifier}) is attached to {interface}'s tcx "
                        f"{'ingress' if attach_type == ATTACH_TCX_INGRESS else 'egress'} hook, perhaps the "
                        "filter of an agent that died; telling, cutting its flows and removing it needs "
                        "CAP_SYS_ADMIN, which this agent lacks") from None
                if program_info(fd)[1] in names:
                    stale.append((ifindex, attach_type, fd))
                else:
                    os.close(fd)
    value = ctypes.create_string_buffer(FLOW_VALUE.size)
    for _, _, fd in stale:
        for map_id in program_info(fd)[2]:
            with contextlib.suppress(OSError), _closing(map_by_id(map_id)) as map_fd:
                clients = [flow.client for _, flow in flows_of(map_fd, value) if flow.passthrough]
                destroy_backend_sockets(backend_port, clients)
    for ifindex, attach_type, fd in stale:
        with contextlib.suppress(OSError):
            bpf(PROG_DETACH, struct.pack("=IIII", ifindex, fd, attach_type, 0))
        os.close(fd)
    return len(stale)


@contextlib.contextmanager
def _closing(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)

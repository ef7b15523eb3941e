"""The remote path: clients on other hosts reach mysqld through the kernel, with no relay, behind the fence.

Through a relay every query of a remote client costs the database host two more socket hops and a
worker's CPU (benchmarks/README-gate.md). On this path the kernel forwards the connection itself:

* an nftables table (``ip dbfence_remote_<gate port>``) DNATs a SYN to the gate's port, arriving on
  one of the filtered interfaces **and marked by the filter**, to mysqld's address and port;
  conntrack then forwards the whole flow (``redirect`` when mysqld's address is loopback: to the
  address the packet came to). Its ``output`` chain drops mysqld's side of such a flow routed out
  of any other interface, so replies cannot go around the egress filter. TCP runs end to end
  between the client and mysqld, so a client that stops reading holds mysqld back exactly as on
  a direct connection, TLS passes untouched, and mysqld sees the client's real address (DNAT
  changes the destination only);
* the filter (:mod:`dbfence.breaker.remote_filter`) on the tcx ingress and egress hooks of those
  interfaces checks the fence word on every packet of those flows, both ways, and drops them from
  the deadline on, even while the agent and the workers are frozen. It marks a SYN for DNAT only
  while the fence admits; otherwise the SYN reaches the gate's workers, which refuse it with the
  MySQL ERR packet as before.

When the node blocks, the agent destroys the admitted flows' mysqld sockets (``ss -K``: the kernel
sends an RST, which the filter lets through, so the client's pool learns at once). The filter is
attached with PROG_ATTACH, not through a link: it outlives the agent, so an agent that dies leaves
its flows fenced at the last deadline, never open. The next agent on this port (or
:meth:`RemotePath.close`) destroys what the old filter admitted, then detaches it.

Never caught: anything that does not use the gate's port. Replication, the agent's own sessions and
monitoring reach mysqld at its own port (or socket); the DNAT rule and the filter match only TCP to
the gate's port (before DNAT) on the listed interfaces, and replies from it (after un-DNAT).
Clients of this host (loopback) keep the workers' path (and the kernel join).

Needs CAP_BPF and CAP_NET_ADMIN (and CAP_SYS_ADMIN to remove a dead agent's filter), tcx (Linux
6.6+), nftables with NAT, ``ss`` with socket destroy (CONFIG_INET_DIAG_DESTROY), TCP to mysqld at
an IPv4 address, and Ethernet interfaces. The flow records and the sockets behind them (reading,
destroying, removing an old filter) are in :mod:`dbfence.breaker.remote_flows`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import mmap
import os
import shutil
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Final

from dbfence.breaker.bpf import (
    ATTACH_TCX_EGRESS,
    ATTACH_TCX_INGRESS,
    F_MMAPABLE,
    MAP_ARRAY,
    MAP_HASH,
    PROG_ATTACH,
    PROG_DETACH,
    PROG_SCHED_CLS,
    BpfUnavailable,
    bpf,
    create_map,
    load_program,
    map_delete,
)
from dbfence.breaker.remote_filter import (
    FLOW_KEY,
    FLOW_VALUE,
    PASS_MARK,
    filter_program,
)
from dbfence.breaker.remote_flows import (
    Flow,
    RemotePathUnavailable,
    bpf_refused,
    destroy_backend_sockets,
    flows_of,
    peers_on_ports,
    remove_stale,
    run,
)
from dbfence.breaker.shared import EPOCH_BITS, EPOCH_MASK

log = logging.getLogger(__name__)

TABLE_PREFIX: Final = "dbfence_remote_"
SYS_NET = Path("/sys/class/net")
_ARPHRD_ETHER: Final = 1
# Closed flows (both FINs or an RST) and flows with no socket left are forgotten after this long.
_SWEEP_AFTER: Final = 10.0
_SWEEP_EVERY: Final = 5.0
# The backend cap: the flows forwarded since the room was last written (what the filter took of
# it) count at once, a few memory reads every _FOLLOW_EVERY; the map is walked every
# _RECOUNT_EVERY to see which flows closed (their room comes back then).
_FOLLOW_EVERY: Final = 0.1
_RECOUNT_EVERY: Final = 1.0
MIN_FLOWS: Final = 65536  # flow records the filter can hold at least (~100 bytes each, when used)
F_NO_PREALLOC: Final = 1
_DESTROY_BATCH: Final = 100


CAP_NET_ADMIN: Final = 12
CAP_SYS_ADMIN: Final = 21
CAP_BPF: Final = 39


def effective_capabilities() -> int:
    """This process's effective capability set (a bit per capability), from /proc."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def unavailable_reason() -> str | None:
    """Why the remote path cannot run here (before trying), or None. Capabilities, not the uid:
    a root agent whose unit bounds them is refused by the kernel all the same."""
    capabilities = effective_capabilities()
    missing = []
    if not capabilities & (1 << CAP_BPF | 1 << CAP_SYS_ADMIN):  # the kernel takes either for bpf(2)
        missing.append("CAP_BPF")
    if not capabilities & 1 << CAP_NET_ADMIN:
        missing.append("CAP_NET_ADMIN")
    if missing:
        return (f"the remote path needs CAP_BPF and CAP_NET_ADMIN; this agent (uid {os.geteuid()}) lacks "
                f"{' and '.join(missing)} (see systemd/dbfence.service)")
    for tool in ("nft", "ss"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH"
    return None


def outside_interfaces() -> list[str]:
    """This namespace's Ethernet interfaces that are up, loopback excluded."""
    names = []
    for entry in sorted(SYS_NET.iterdir()):
        try:
            kind = int((entry / "type").read_text())
            flags = int((entry / "flags").read_text(), 16)
        except (OSError, ValueError):
            continue
        if kind == _ARPHRD_ETHER and flags & 1:  # IFF_UP
            names.append(entry.name)
    return names


class RemotePath:
    """The nftables table, the filter programs and their maps, and the sweeper, for one gate port."""

    def __init__(self, gate_port: int, backend: tuple[str, int], interfaces: list[str]) -> None:
        self.gate_port = gate_port
        self.backend = backend
        self.interfaces = interfaces
        self.table = f"{TABLE_PREFIX}{gate_port}"
        self.fence_fd = -1
        self.flows_fd = -1
        self._programs: list[int] = []
        self._attached: list[tuple[int, int, int]] = []  # (ifindex, attach type, program fd)
        self._fence_map: mmap.mmap | None = None
        self._fence_view: memoryview | None = None
        self._value = ctypes.create_string_buffer(FLOW_VALUE.size)
        self._lock = threading.Lock()  # destroy/sweep/close
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pending_cut = threading.Event()
        self._sweeper: threading.Thread | None = None
        # Called with the forwarded flows holding mysqld connections (every _FOLLOW_EVERY while
        # they change, and after each count); returns the room for more.
        self.on_refresh: Callable[[int], int] | None = None
        self._room_lock = threading.Lock()
        self._room_written = 0  # the room as last written (the filter takes one per flow)
        self._forwarded = 0  # flows open at the last count, plus those forwarded since

    # --- set-up and removal -----------------------------------------------------------------------
    @classmethod
    def create(cls, gate_port: int, backend_host: str, backend_port: int, interfaces: Iterable[str],
               max_flows: int) -> RemotePath:
        """Remove what an earlier agent on this port left, then load, attach and add the DNAT rule."""
        reason = unavailable_reason()
        if reason is not None:
            raise RemotePathUnavailable(reason)
        try:
            address = ipaddress.IPv4Address(backend_host)
        except ValueError:
            raise RemotePathUnavailable(f"mysqld's address is not an IPv4 address: {backend_host}") from None
        names = list(interfaces) or outside_interfaces()
        if not names:
            raise RemotePathUnavailable("no Ethernet interface is up in this network namespace")
        path = cls(gate_port, (str(address), backend_port), names)
        try:
            remove_stale(gate_port, names, backend_port)
            path._load(max_flows)
            path._add_table(address.is_loopback)
        except BaseException:
            path.close()
            raise
        path._sweeper = threading.Thread(target=path._sweep_loop, name="dbfence-remote-sweep", daemon=True)
        path._sweeper.start()
        return path

    def _load(self, max_flows: int) -> None:
        try:
            self.fence_fd = create_map(MAP_ARRAY, 4, 8, 3, F_MMAPABLE)
            # Entries are made as flows come (no preallocation): refused clients' flows stay
            # recorded until swept (10 s after they close), so a retry storm needs the room.
            entries = max(max_flows, MIN_FLOWS)
            self.flows_fd = create_map(MAP_HASH, FLOW_KEY.size, FLOW_VALUE.size, entries, F_NO_PREALLOC)
        except OSError as error:
            raise bpf_refused(error, "cannot create BPF maps") from None
        for ingress, attach_type in ((True, ATTACH_TCX_INGRESS), (False, ATTACH_TCX_EGRESS)):
            code = filter_program(ingress, self.fence_fd, self.flows_fd, self.gate_port)
            name = f"dbf_r{'in' if ingress else 'out'}_{self.gate_port}"
            program = load_program(code, PROG_SCHED_CLS, name)
            self._programs.append(program)
            for interface in self.interfaces:
                try:
                    ifindex = socket.if_nametoindex(interface)
                    bpf(PROG_ATTACH, struct.pack("=IIII", ifindex, program, attach_type, 0))
                except OSError as error:
                    message = f"cannot attach the filter to {interface}: {error.strerror}"
                    raise RemotePathUnavailable(error.errno, message) from None
                self._attached.append((ifindex, attach_type, program))

    def _add_table(self, loopback_backend: bool) -> None:
        host, port = self.backend
        target = f"redirect to :{port}" if loopback_backend else f"dnat to {host}:{port}"
        interfaces = ", ".join(f'"{name}"' for name in self.interfaces)
        rules = (
            f"table ip {self.table} {{\n"
            "  chain prerouting {\n"
            "    type nat hook prerouting priority dstnat; policy accept;\n"
            f"    iifname {{ {interfaces} }} tcp dport {self.gate_port} "
            f"meta mark & {PASS_MARK:#x} == {PASS_MARK:#x} {target}\n"
            "  }\n"
            # mysqld's side of a forwarded flow may leave only through a filtered interface (the
            # egress program fences it there): never around the filter by another route.
            "  chain output {\n"
            "    type filter hook output priority filter; policy accept;\n"
            f"    meta l4proto tcp ct status dnat ct original proto-dst {self.gate_port} "
            f"oifname != {{ {interfaces} }} drop\n"
            "  }\n"
            "}\n"
        )
        run(["nft", "delete", "table", "ip", self.table])  # an earlier agent's: absent is fine
        done = run(["nft", "-f", "-"], rules)
        if done.returncode != 0:
            raise RemotePathUnavailable(f"nftables refused the DNAT rule: {done.stderr.strip()}")

    def close(self) -> None:
        """Destroy every admitted flow, remove the rule, detach the filter. Block the fence first."""
        self._stop.set()
        self._wake.set()
        if self._sweeper is not None and self._sweeper is not threading.current_thread():
            self._sweeper.join(5)
        with self._lock:
            if self.flows_fd >= 0:
                self._destroy(None)
            run(["nft", "delete", "table", "ip", self.table])
            for ifindex, attach_type, program in self._attached:
                with contextlib.suppress(OSError):
                    bpf(PROG_DETACH, struct.pack("=IIII", ifindex, program, attach_type, 0))
            self._attached = []
            if self._fence_view is not None:
                self._fence_view.release()  # the caller's references are this same view
                self._fence_view = None
            if self._fence_map is not None:
                self._fence_map.close()
                self._fence_map = None
            for fd in (*self._programs, self.fence_fd, self.flows_fd):
                if fd >= 0:
                    os.close(fd)
            self._programs, self.fence_fd, self.flows_fd = [], -1, -1

    # --- the fence ------------------------------------------------------------------------------
    def fence_words(self) -> memoryview:
        """The fence word as the filter reads it, mapped here (one 8-byte store renews it)."""
        if self._fence_view is None:
            protection = mmap.PROT_READ | mmap.PROT_WRITE
            self._fence_map = mmap.mmap(self.fence_fd, mmap.PAGESIZE, mmap.MAP_SHARED, protection)
            self._fence_view = memoryview(self._fence_map).cast("Q")
        return self._fence_view

    def accept_new(self, allowed: bool) -> None:
        """Whether a SYN may start a new kernel-forwarded flow (the fence must admit too)."""
        self.fence_words()[1] = 1 if allowed else 0

    def set_room(self, flows: int) -> None:
        """How many more flows the filter may forward (it takes one per flow) before it leaves new
        clients to the workers; the agent rewrites it from the cap and what is held."""
        with self._room_lock:
            self._write_room(flows)

    def _write_room(self, flows: int) -> None:
        self._room_written = max(0, flows)
        self.fence_words()[2] = self._room_written

    def _room_taken(self) -> int:
        """Flows the filter forwarded since the room was last written. It takes one per SYN even
        when none is left (then the SYN goes to a worker), so the word may have gone below 0."""
        left = int(self.fence_words()[2])
        left = left - (1 << 64) if left >= 1 << 63 else left
        return self._room_written - max(0, left)

    def follow_cap(self, recount: bool) -> None:
        """Share the backend cap with the workers: count the flows forwarded since the last look
        (or, with ``recount``, walk the map: closed flows give their room back), tell the agent,
        and write the room it answers. A SYN the filter takes between this read and the write is
        not seen as taken until the next count (within _RECOUNT_EVERY)."""
        if self.on_refresh is None:
            return
        with self._room_lock:
            taken = self._room_taken()
            forwarded = self.passthrough_live() if recount else self._forwarded + taken
            room = self.on_refresh(forwarded)
            self._forwarded = forwarded
            if recount or taken or max(0, room) != self._room_written:
                self._write_room(room)

    def passthrough_live(self) -> int:
        """Forwarded flows not yet seen closing (each holds a mysqld connection)."""
        return sum(1 for flow in self.flows() if flow.passthrough and not flow.closing)

    def cut(self) -> None:
        """Destroy, soon (on the sweeper's thread), every admitted flow the fence no longer admits:
        all when blocked, those of older epochs when admitting. The filter already drops their packets."""
        self._pending_cut.set()
        self._wake.set()

    # --- status ---------------------------------------------------------------------------------
    def flows(self) -> list[Flow]:
        return [flow for _, flow in self._read_flows()]

    def _read_flows(self) -> Iterator[tuple[bytes, Flow]]:
        if self.flows_fd < 0:
            return
        yield from flows_of(self.flows_fd, self._value)

    # --- the sweeper ------------------------------------------------------------------------------
    def _sweep_loop(self) -> None:
        last_sweep = last_count = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(_FOLLOW_EVERY)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                with self._lock:
                    if self._pending_cut.is_set():
                        self._pending_cut.clear()
                        self._destroy(self._admitted_epoch())
                    now = time.monotonic()
                    if now - last_sweep >= _SWEEP_EVERY:
                        last_sweep = now
                        self._sweep()
                    recount = now - last_count >= _RECOUNT_EVERY
                    if recount:
                        last_count = now
                    self.follow_cap(recount)
            except Exception:  # a failed round must not end the thread: log it, try again later
                log.exception("remote path: destroying, sweeping or counting flows failed")

    def _admitted_epoch(self) -> int | None:
        """The epoch the fence admits now, None when it admits nothing (read as the filter does)."""
        word = int(self.fence_words()[0])
        deadline_ns = (word >> EPOCH_BITS) * 1000
        return word & EPOCH_MASK if time.clock_gettime_ns(time.CLOCK_MONOTONIC) < deadline_ns else None

    def _destroy(self, keep_epoch: int | None) -> int:
        """Destroy mysqld's end of each passthrough flow not of ``keep_epoch``; forget them."""
        doomed = [(key, flow) for key, flow in self._read_flows()
                  if flow.passthrough and (keep_epoch is None or flow.epoch != keep_epoch & EPOCH_MASK)]
        destroy_backend_sockets(self.backend[1], [flow.client for _, flow in doomed])
        for key, _ in doomed:
            map_delete(self.flows_fd, key)  # a packet of a forgotten flow is dropped: fail safe
        return len(doomed)

    def _sweep(self) -> None:
        """Forget flows that ended (a FIN both ways or an RST) or whose socket is gone."""
        flows = list(self._read_flows())
        if not flows:
            return  # an idle gate runs no `ss`
        live = peers_on_ports((self.gate_port, self.backend[1]))
        for key, flow in flows:
            if (flow.closing or flow.client not in live) and flow.idle > _SWEEP_AFTER:
                map_delete(self.flows_fd, key)  # a late packet of it is dropped: fail safe


def probe() -> str | None:
    """None if the filter loads here, else why not (does not attach anything)."""
    reason = unavailable_reason()
    if reason is not None:
        return reason
    try:
        fence = create_map(MAP_ARRAY, 4, 8, 3, F_MMAPABLE)
        flows = create_map(MAP_HASH, FLOW_KEY.size, FLOW_VALUE.size, 1)
        try:
            for ingress in (True, False):
                code = filter_program(ingress, fence, flows, 3307)
                os.close(load_program(code, PROG_SCHED_CLS, "dbf_probe"))
        finally:
            os.close(fence)
            os.close(flows)
    except (BpfUnavailable, OSError) as error:
        return str(error)
    return None

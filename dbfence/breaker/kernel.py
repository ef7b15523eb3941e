"""Kernel forwarding: a client on the database host talks to mysqld socket to socket, behind the fence.

Through a userspace proxy each query costs two more TCP hops, two wake-ups, four socket syscalls
and two copies, and on a small host that CPU is taken from mysqld (benchmarks/README-gate.md). When
the client runs on this host, its socket and mysqld's socket are both in this kernel. Once the
client has logged in through the gate, the worker *joins* them: an ``sk_msg`` program runs on every
send of either socket and puts the bytes straight into the other one's receive queue. No TCP, no
gate socket, no worker. The gate's own two sockets of the link stay connected and idle, so a cut
(or a close from either side) travels exactly as before.

The fence is checked on every send, as the workers do: the program loads the fence word (the agent
mirrors it into a one-entry BPF array it maps into its own memory, so renewing is still one store)
and passes a message only if ``bpf_ktime_get_ns()`` (CLOCK_MONOTONIC, the agent's timeline) is
before the word's deadline and the word's epoch is the link's. Otherwise the message takes the
normal way, over TCP to the gate's socket, where the worker refuses it and cuts the link; the link
is marked refused first, so no later message of it can slip past on either path. So the deadline
holds even while every dbfence process is frozen: no byte reaches mysqld past it.

Flow control: a message put into a receive queue this way is not limited by the receiver's buffer
(the kernel's sockmap has no backpressure), so a client that stops reading while mysqld sends a
large result would let it queue without bound. Each direction therefore has a budget: at most
``SHORTCUT_BUDGET`` bytes since the other side last spoke (a MySQL reply follows a command; a
command follows a read reply). A message beyond it, and every later one in that direction, goes
over TCP through the worker, which forwards with ordinary flow control. The receiver reads the
queued messages before the TCP bytes, so the order holds.

How the outside sockets are found: a ``sock_ops`` program on the root of the cgroup v2 hierarchy
sees every TCP connection of the host being established and keeps, keyed by its four-tuple, each
socket of the gate's network namespace that (a) connects to the gate's port or (b) is mysqld's end
of a connection from a worker's backend socket (the worker binds that socket first and announces
its address, so no other connection to mysqld is touched). The programs are attached through a BPF
link owned by the agent: if the agent dies, the kernel detaches them and nothing stays behind.

Clients on other hosts (or over IPv6) are not joined: the workers forward their bytes. Needs
CAP_BPF and CAP_NET_ADMIN (root), cgroup v2, and TCP to mysqld at an IPv4 address; :func:`probe`
says why not.
"""

from __future__ import annotations

import ctypes
import ipaddress
import mmap
import os
import socket
import struct
from dataclasses import dataclass
from typing import Final

from dbfence.breaker.bpf import (
    ATTACH_CGROUP_SOCK_OPS,
    ATTACH_SK_MSG_VERDICT,
    F_MMAPABLE,
    LINK_CREATE,
    MAP_ARRAY,
    MAP_HASH,
    MAP_SOCKHASH,
    PROG_ATTACH,
    PROG_SK_MSG,
    PROG_SOCK_OPS,
    BpfUnavailable,
    bpf,
    create_map,
    load_program,
    map_delete,
    map_lookup,
    map_update,
    program_id,
)
from dbfence.breaker.kernel_programs import (
    ENTRY,
    REFUSED_EPOCH,
    SHORTCUT_BUDGET,
    TAIL_SIZE,
    msg_program,
    ops_program,
    remote_port,
)
from dbfence.breaker.shared import EPOCH_MASK

__all__ = ["SHORTCUT_BUDGET", "TAIL_SIZE", "Joined", "KernelForwarder", "KernelForwardingUnavailable",
           "LinkCounters", "cgroup2_root", "netns_cookie", "probe", "socket_cookie", "socket_key"]

KernelForwardingUnavailable = BpfUnavailable

SO_COOKIE: Final = 57
SO_NETNS_COOKIE: Final = 71
# A socket's key: local IPv4, remote IPv4 (network order, as the kernel stores them), local port
# (host order), remote port (network order in the upper half: how both contexts present it).
_KEY = struct.Struct("=IIII")
# A route: the link entry of this direction, and the key of the socket to deliver to.
_ROUTE = struct.Struct("=Q16s8x")
# An announced backend socket: (address, port) as a key's remote half.
_ANNOUNCED = struct.Struct("=II")


# --- addresses and keys ---------------------------------------------------------------------------
def _address(ip: str) -> int:
    parsed = ipaddress.ip_address(ip)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    if not isinstance(parsed, ipaddress.IPv4Address):
        raise ValueError(f"not an IPv4 address: {ip}")
    return int(struct.unpack("=I", parsed.packed)[0])


def socket_key(local: tuple[str, int], remote: tuple[str, int]) -> bytes:
    """The key of the socket with this local and remote address, as the programs build it."""
    return _KEY.pack(_address(local[0]), _address(remote[0]), local[1], remote_port(remote[1]))


def socket_cookie(fd: int) -> int:
    """The kernel's id of a socket (never reused while the system is up), by descriptor: uvloop
    transports do not lend out their socket objects."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        return int(struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0])


def netns_cookie() -> int:
    """The kernel's id of this process's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe_socket:
        return int(struct.unpack("=Q", probe_socket.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0])


def cgroup2_root() -> str | None:
    """Where the root of the cgroup v2 hierarchy is mounted, if it is."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                separator = fields.index("-")
                if fields[separator + 1] == "cgroup2" and fields[3] == "/":
                    return fields[4]
    except (OSError, ValueError, IndexError):
        return None
    return None


# --- what the workers read ------------------------------------------------------------------------
@dataclass(frozen=True)
class LinkCounters:
    """What the kernel counted for one direction of a joined link."""

    received: int  # bytes delivered socket to socket
    chunks: int  # messages (a client's commands, for drivers that write each at once)
    last_active: float  # monotonic seconds; 0.0 if nothing passed yet
    tail: bytes  # the last message's last TAIL_SIZE bytes (mysqld's direction only)
    tail_complete: bool  # the tail is the whole last message
    overflowed: bool  # over its budget: this direction now goes through the worker
    refused: bool  # the fence refused a message: the worker must cut the link


@dataclass(frozen=True)
class Joined:
    """A link whose outside sockets were joined: the two directions' entries and the two routes."""

    cookies: tuple[int, int]  # the gate's client-side and mysqld-side sockets
    keys: tuple[bytes, bytes]  # the client's and mysqld's sockets


class KernelForwarder:
    """The maps (shared by the agent and its workers) and, in the agent, the programs and link."""

    def __init__(self, fence_fd: int, links_fd: int, sockets_fd: int, routes_fd: int, announced_fd: int,
                 owned: tuple[int, ...] = ()) -> None:
        self.fence_fd = fence_fd
        self.links_fd = links_fd
        self.sockets_fd = sockets_fd
        self.routes_fd = routes_fd
        self.announced_fd = announced_fd
        self._owned = owned  # the programs and the cgroup link: the agent's only
        self._fence_map: mmap.mmap | None = None
        self._entry = ctypes.create_string_buffer(ENTRY.size)
        self._cookie = ctypes.create_string_buffer(8)

    @classmethod
    def create(cls, gate_port: int, backend_port: int, max_links: int) -> KernelForwarder:
        """Make the maps, load and attach the programs; raises KernelForwardingUnavailable."""
        root = cgroup2_root()
        if root is None:
            raise KernelForwardingUnavailable("no cgroup v2 hierarchy is mounted")
        fds: list[int] = []
        try:
            try:
                fds.append(create_map(MAP_ARRAY, 4, 8, 1, F_MMAPABLE))
                fds.append(create_map(MAP_HASH, 8, ENTRY.size, 2 * max_links))
                fds.append(create_map(MAP_SOCKHASH, _KEY.size, 8, 2 * max_links))
                fds.append(create_map(MAP_HASH, _KEY.size, _ROUTE.size, 2 * max_links))
                fds.append(create_map(MAP_HASH, _ANNOUNCED.size, 4, 2 * max_links))
            except OSError as error:
                message = f"cannot create BPF maps: {error.strerror}"
                raise KernelForwardingUnavailable(error.errno, message) from None
            fence_fd, links_fd, sockets_fd, routes_fd, announced_fd = fds
            msg_code = msg_program(fence_fd, links_fd, sockets_fd, routes_fd)
            msg = load_program(msg_code, PROG_SK_MSG, "dbfence_msg")
            fds.append(msg)
            ops = ops_program(sockets_fd, announced_fd, gate_port, backend_port, netns_cookie())
            fds.append(load_program(ops, PROG_SOCK_OPS, "dbfence_ops"))
            try:
                bpf(PROG_ATTACH, struct.pack("=IIII", sockets_fd, msg, ATTACH_SK_MSG_VERDICT, 0))
                cgroup = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    link = struct.pack("=IIII", fds[-1], cgroup, ATTACH_CGROUP_SOCK_OPS, 0)
                    fds.append(bpf(LINK_CREATE, link))  # detached when the last holder closes it
                finally:
                    os.close(cgroup)
            except OSError as error:
                message = f"cannot attach the programs: {error.strerror}"
                raise KernelForwardingUnavailable(error.errno, message) from None
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        fence_fd, links_fd, sockets_fd, routes_fd, announced_fd = fds[:5]
        return cls(fence_fd, links_fd, sockets_fd, routes_fd, announced_fd, owned=tuple(fds[5:]))

    def descriptors(self) -> tuple[int, int, int, int, int]:
        """What a worker needs."""
        return (self.fence_fd, self.links_fd, self.sockets_fd, self.routes_fd, self.announced_fd)

    def program_ids(self) -> list[int]:
        """The kernel-wide ids of the programs (the agent's copy only): ``bpftool prog show id N``."""
        return [program_id(fd) for fd in self._owned[:2]]

    def close(self) -> None:
        if self._fence_map is not None:
            self._fence_map.close()
            self._fence_map = None
        for fd in (*self._owned, *self.descriptors()):
            os.close(fd)

    # --- the agent's side -------------------------------------------------------------------
    def fence_words(self) -> memoryview:
        """The fence word as the program reads it, mapped into this process (one 8-byte store)."""
        if self._fence_map is None:
            protection = mmap.PROT_READ | mmap.PROT_WRITE
            self._fence_map = mmap.mmap(self.fence_fd, mmap.PAGESIZE, mmap.MAP_SHARED, protection)
        return memoryview(self._fence_map).cast("Q")

    # --- a worker's side ----------------------------------------------------------------------
    def announce(self, address: tuple[str, int]) -> bytes:
        """A backend socket bound to ``address`` is about to connect to mysqld: keep mysqld's end."""
        key = _ANNOUNCED.pack(_address(address[0]), remote_port(address[1]))
        map_update(self.announced_fd, key, b"\x01\x00\x00\x00")
        return key

    def withdraw(self, key: bytes) -> None:
        map_delete(self.announced_fd, key)

    def join(
        self,
        client: tuple[tuple[str, int], tuple[str, int]],
        backend: tuple[tuple[str, int], tuple[str, int]],
        cookies: tuple[int, int],
        epoch: int,
    ) -> Joined | None:
        """Join the outside ends of a logged-in link, if both are sockets of this host.

        ``client`` and ``backend`` are the gate sockets' (local, peer) addresses, ``cookies`` their
        cookies. Call it only while neither side may speak and nothing is queued (the worker does
        so just before passing mysqld's login OK on). Returns None for a client elsewhere; then
        mysqld's end is let go, so its sends meet no program at all.
        """
        (gate_local, client_address), (backend_local, mysqld_address) = client, backend
        try:
            client_key = socket_key(client_address, gate_local)
            mysqld_key = socket_key(mysqld_address, backend_local)
        except ValueError:
            return None
        if not self.holds(mysqld_key):
            return None
        if not self.holds(client_key):
            map_delete(self.sockets_fd, mysqld_key)
            return None
        joined = Joined(cookies, (client_key, mysqld_key))
        directions = ((cookies[0], cookies[1], 0, client_key, mysqld_key),
                      (cookies[1], cookies[0], 1, mysqld_key, client_key))
        try:
            for own, peer, keep_tail, sender, receiver in directions:
                entry = ENTRY.pack(epoch & EPOCH_MASK, 0, 0, 0, peer, keep_tail, 0, 0, 0, b"")
                map_update(self.links_fd, struct.pack("=Q", own), entry)
                map_update(self.routes_fd, sender, _ROUTE.pack(own, receiver))  # routes last: live now
        except OSError:
            self.forget(joined)
            map_delete(self.sockets_fd, mysqld_key)
            raise
        return joined

    def holds(self, key: bytes) -> bool:
        """Whether the socket with this key was kept by the sock_ops program."""
        try:
            map_lookup(self.sockets_fd, key, self._cookie)
        except FileNotFoundError:
            return False
        return True

    def counters(self, cookie: int) -> LinkCounters | None:
        """One direction's counters, or None once its entry is gone."""
        try:
            map_lookup(self.links_fd, struct.pack("=Q", cookie), self._entry)
        except FileNotFoundError:
            return None
        epoch, received, chunks, last_ns, _, _, length, _, overflow, tail = ENTRY.unpack(self._entry.raw)
        # The tail is written without a lock: read it only while the link is quiet.
        tail = tail[: min(length, TAIL_SIZE)]
        return LinkCounters(received, chunks, last_ns / 1e9, tail, length <= TAIL_SIZE,
                            overflow != 0, epoch == REFUSED_EPOCH)

    def forget(self, joined: Joined) -> None:
        """Drop a link's routes and entries (the sockets map forgets a socket when it closes)."""
        for key in joined.keys:
            map_delete(self.routes_fd, key)
        for cookie in joined.cookies:
            map_delete(self.links_fd, struct.pack("=Q", cookie))


def probe() -> str | None:
    """None if this host can forward in the kernel, else why not (for the status and the logs)."""
    try:
        KernelForwarder.create(0, 0, 1).close()  # port 0: the probe's programs keep no socket
    except OSError as error:
        return str(error)
    return None

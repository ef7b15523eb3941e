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
    CALL_KTIME_NS,
    CALL_MAP_LOOKUP,
    CALL_MSG_PULL_DATA,
    CALL_MSG_REDIRECT_HASH,
    CALL_NETNS_COOKIE,
    CALL_SOCK_HASH_UPDATE,
    F_MMAPABLE,
    FP,
    JA,
    JEQ_IMM,
    JGE_REG,
    JGT_IMM,
    JGT_REG,
    JLT_IMM,
    JNE32_IMM,
    JNE_IMM,
    JNE_REG,
    LINK_CREATE,
    MAP_ARRAY,
    MAP_HASH,
    MAP_SOCKHASH,
    PROG_ATTACH,
    PROG_SK_MSG,
    PROG_SOCK_OPS,
    R0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    BpfUnavailable,
    Program,
    bpf,
    create_map,
    load_program,
    map_delete,
    map_lookup,
    map_update,
    program_id,
)
from dbfence.breaker.shared import EPOCH_BITS, EPOCH_MASK

KernelForwardingUnavailable = BpfUnavailable

SO_COOKIE: Final = 57
SO_NETNS_COOKIE: Final = 71
# Bytes one direction may deliver since the other side last spoke, before it goes through the
# worker (see the module docstring). Far above an OLTP reply; a dump or a report overflows.
SHORTCUT_BUDGET: Final = 1 << 20
TAIL_SIZE: Final = 64

# One entry per direction in the links map, keyed by the cookie of the gate socket that would have
# received those bytes (the client side for commands, the mysqld side for replies). Offsets are
# shared by the program and by LinkCounters.
_EPOCH, _BYTES, _CHUNKS, _LAST_NS, _PEER, _KEEP_TAIL, _TAIL_LEN, _SINCE, _OVERFLOW, _TAIL = (
    0, 8, 16, 24, 32, 40, 48, 56, 64, 72
)
_ENTRY = struct.Struct("=QQQQQQQQQ64s")
assert _ENTRY.size == _TAIL + TAIL_SIZE
_REFUSED: Final = (1 << 64) - 1  # the epoch of a refused link: no fence word carries it

# A socket's key: local IPv4, remote IPv4 (network order, as the kernel stores them), local port
# (host order), remote port (network order in the upper half: how both contexts present it).
_KEY = struct.Struct("=IIII")
# A route: the link entry of this direction, and the key of the socket to deliver to.
_ROUTE = struct.Struct("=Q16s8x")
# An announced backend socket: (address, port) as a key's remote half.
_ANNOUNCED = struct.Struct("=II")

# struct bpf_sock_ops and struct sk_msg_md (include/uapi/linux/bpf.h): where the four-tuple is.
_OPS_OP, _OPS_FAMILY, _OPS_REMOTE_IP, _OPS_LOCAL_IP, _OPS_REMOTE_PORT, _OPS_LOCAL_PORT = 0, 20, 24, 28, 64, 68
_MSG_DATA, _MSG_DATA_END, _MSG_FAMILY, _MSG_REMOTE_IP, _MSG_LOCAL_IP = 0, 8, 16, 20, 24
_MSG_REMOTE_PORT, _MSG_LOCAL_PORT, _MSG_SIZE = 60, 64, 68
_OPS_ACTIVE_ESTABLISHED, _OPS_PASSIVE_ESTABLISHED = 4, 5
_F_INGRESS: Final = 1
_SK_PASS: Final = 1


# --- addresses and keys ---------------------------------------------------------------------------
def _address(ip: str) -> int:
    parsed = ipaddress.ip_address(ip)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    if not isinstance(parsed, ipaddress.IPv4Address):
        raise ValueError(f"not an IPv4 address: {ip}")
    return int(struct.unpack("=I", parsed.packed)[0])


def _remote_port(port: int) -> int:
    return socket.htons(port) << 16


def socket_key(local: tuple[str, int], remote: tuple[str, int]) -> bytes:
    """The key of the socket with this local and remote address, as the programs build it."""
    return _KEY.pack(_address(local[0]), _address(remote[0]), local[1], _remote_port(remote[1]))


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


# --- the programs -----------------------------------------------------------------------------------
def ops_program(sockets_fd: int, announced_fd: int, gate_port: int, backend_port: int, netns: int) -> bytes:
    """sock_ops: keep the gate's local clients and mysqld's end of the workers' backend sockets."""
    p = Program()
    p.mov(R6, R1)
    p.load_u32(R1, R6, _OPS_FAMILY)
    p.jump(JNE_IMM, R1, "out", imm=socket.AF_INET)
    # Only the gate's own network namespace: the program sees the whole host, and other
    # namespaces (containers, a lab's hosts) reuse the same addresses.
    p.mov(R1, R6)
    p.call(CALL_NETNS_COOKIE)
    p.load_imm64(R1, netns)
    p.jump(JNE_REG, R0, "out", src=R1)
    # The key at fp-16; the remote half again at fp-24 (the announced map's key).
    fields = ((-16, _OPS_LOCAL_IP), (-12, _OPS_REMOTE_IP), (-8, _OPS_LOCAL_PORT), (-4, _OPS_REMOTE_PORT),
              (-24, _OPS_REMOTE_IP), (-20, _OPS_REMOTE_PORT))
    for offset, field in fields:
        p.load_u32(R1, R6, field)
        p.store_u32(FP, offset, R1)
    p.load_u32(R1, R6, _OPS_OP)
    p.jump(JEQ_IMM, R1, "active", imm=_OPS_ACTIVE_ESTABLISHED)
    p.jump(JEQ_IMM, R1, "passive", imm=_OPS_PASSIVE_ESTABLISHED)
    p.jump(JA, 0, "out")
    p.label("active")  # a client of this host connecting to the gate's port
    p.load_u32(R1, FP, -4)
    p.jump(JNE32_IMM, R1, "out", imm=_remote_port(gate_port))
    p.jump(JA, 0, "keep")
    p.label("passive")  # mysqld accepting a connection from an announced backend socket
    p.load_u32(R1, FP, -8)
    p.jump(JNE_IMM, R1, "out", imm=backend_port)
    p.load_map(R1, announced_fd)
    p.mov(R2, FP)
    p.add_imm(R2, -24)
    p.call(CALL_MAP_LOOKUP)
    p.jump(JEQ_IMM, R0, "out")
    p.label("keep")
    p.mov(R1, R6)
    p.load_map(R2, sockets_fd)
    p.mov(R3, FP)
    p.add_imm(R3, -16)
    p.mov_imm(R4, 0)
    p.call(CALL_SOCK_HASH_UPDATE)  # a full map only means this connection is not joined
    p.label("out")
    p.mov_imm(R0, 1)
    p.exit()
    return p.assemble()


def msg_program(fence_fd: int, links_fd: int, sockets_fd: int, routes_fd: int) -> bytes:
    """sk_msg: fence check, budget, counters and tail, then deliver to the peer socket."""
    p = Program()
    p.mov(R6, R1)
    p.load_u32(R1, R6, _MSG_FAMILY)
    p.jump(JNE_IMM, R1, "pass", imm=socket.AF_INET)
    key_fields = ((-16, _MSG_LOCAL_IP), (-12, _MSG_REMOTE_IP), (-8, _MSG_LOCAL_PORT), (-4, _MSG_REMOTE_PORT))
    for offset, field in key_fields:
        p.load_u32(R1, R6, field)
        p.store_u32(FP, offset, R1)
    p.load_map(R1, routes_fd)
    p.mov(R2, FP)
    p.add_imm(R2, -16)
    p.call(CALL_MAP_LOOKUP)
    p.jump(JEQ_IMM, R0, "pass")  # not joined: TCP, as always
    p.mov(R7, R0)  # r7 = the route
    p.load_map(R1, links_fd)
    p.mov(R2, R7)  # its first field is the entry's key
    p.call(CALL_MAP_LOOKUP)
    p.jump(JEQ_IMM, R0, "pass")
    p.mov(R9, R0)  # r9 = this direction's entry
    _fence_check(p, fence_fd)  # r8 = now
    # This side spoke: the other direction's budget starts again.
    p.load_map(R1, links_fd)
    p.mov(R2, R9)
    p.add_imm(R2, _PEER)
    p.call(CALL_MAP_LOOKUP)
    p.jump(JEQ_IMM, R0, "budget")
    p.store_u64_imm(R0, _SINCE, 0)
    p.label("budget")
    p.load_u64(R1, R9, _OVERFLOW)
    p.jump(JNE_IMM, R1, "pass", imm=0)  # once over, always over: the order of the bytes
    p.load_u32(R1, R6, _MSG_SIZE)
    p.load_u64(R2, R9, _SINCE)
    p.add(R2, R1)
    p.jump(JGT_IMM, R2, "overflow", imm=SHORTCUT_BUDGET)
    p.store_u64(R9, _SINCE, R2)
    p.atomic_add_u64(R9, _BYTES, R1)
    p.mov_imm(R1, 1)
    p.atomic_add_u64(R9, _CHUNKS, R1)
    p.store_u64(R9, _LAST_NS, R8)
    p.load_u64(R1, R9, _KEEP_TAIL)
    p.jump(JEQ_IMM, R1, "deliver")
    _copy_tail(p)
    p.label("deliver")
    p.mov(R1, R6)
    p.load_map(R2, sockets_fd)
    p.mov(R3, R7)
    p.add_imm(R3, 8)  # the route's second field: the peer socket's key
    p.mov_imm(R4, _F_INGRESS)  # into its receive queue, as if it had come over TCP
    p.call(CALL_MSG_REDIRECT_HASH)
    p.exit()
    p.label("overflow")
    p.store_u64_imm(R9, _OVERFLOW, 1)
    p.jump(JA, 0, "pass")
    p.label("refuse")
    # No fence word has this epoch: every later message of the link is refused too, even if the
    # word is renewed meanwhile (the refused one must not be overtaken).
    p.mov_imm(R1, -1)
    p.store_u64(R9, _EPOCH, R1)
    p.label("pass")
    p.mov_imm(R0, _SK_PASS)
    p.exit()
    return p.assemble()


def _fence_check(p: Program, fence_fd: int) -> None:
    """Jump to "refuse" unless now < the fence word's deadline and its epoch is the link's (r9);
    leaves r8 = now. The word keeps microseconds, rounded down: never later than the agent's."""
    p.load_map(R1, fence_fd)
    p.store_u32_imm(FP, -36, 0)
    p.mov(R2, FP)
    p.add_imm(R2, -36)
    p.call(CALL_MAP_LOOKUP)
    p.jump(JEQ_IMM, R0, "refuse")  # the map always has its one entry
    p.load_u64(R1, R0, 0)
    p.store_u64(FP, -32, R1)
    p.mov(R8, R1)
    p.rsh_imm(R8, EPOCH_BITS)
    p.mul_imm(R8, 1000)  # the deadline in ns; 0 when blocked
    p.call(CALL_KTIME_NS)
    p.jump(JGE_REG, R0, "refuse", src=R8)
    p.mov(R8, R0)
    p.load_u64(R1, R9, _EPOCH)
    p.load_u64(R2, FP, -32)
    p.and_imm(R2, EPOCH_MASK)
    p.jump(JNE_REG, R1, "refuse", src=R2)


def _copy_tail(p: Program) -> None:
    """The message's last TAIL_SIZE bytes (all if shorter) into the entry's tail, for the drain.

    Moved with direct loads, unrolled (eight 8-byte words, then at most seven bytes): the helper
    that copies arbitrary memory needs CAP_PERFMON, which the agent does not otherwise need.
    """
    p.load_u32(R4, R6, _MSG_SIZE)
    p.store_u64_imm(R9, _TAIL_LEN, 0)  # "nothing known" until the copy is done
    p.jump(JEQ_IMM, R4, "deliver")
    p.mov_imm(R2, 0)
    p.jump(JLT_IMM, R4, "pull", imm=TAIL_SIZE)
    p.mov(R2, R4)
    p.add_imm(R2, -TAIL_SIZE)
    p.label("pull")
    p.mov(R3, R4)
    p.mov(R1, R6)
    p.mov_imm(R4, 0)
    p.call(CALL_MSG_PULL_DATA)  # makes [start, size) one contiguous run at data
    p.jump(JNE_IMM, R0, "deliver", imm=0)
    p.load_u64(R2, R6, _MSG_DATA)
    p.load_u64(R3, R6, _MSG_DATA_END)
    p.mov(R1, R9)
    p.add_imm(R1, _TAIL)
    words = TAIL_SIZE // 8
    for word in range(words):
        p.mov(R4, R2)
        p.add_imm(R4, 8)
        p.jump(JGT_REG, R4, f"bytes{word}", src=R3)
        p.load_u64(R5, R2, 0)
        p.store_u64(R1, 0, R5)
        if word < words - 1:  # never past the entry's end, not even unused (refused without root)
            p.add_imm(R2, 8)
            p.add_imm(R1, 8)
    p.jump(JA, 0, "tail_done")
    for word in range(words):
        p.label(f"bytes{word}")
        for index in range(7):
            p.mov(R4, R2)
            p.add_imm(R4, 1)
            p.jump(JGT_REG, R4, "tail_done", src=R3)
            p.load_u8(R5, R2, 0)
            p.store_u8(R1, 0, R5)
            if index < 6:
                p.add_imm(R2, 1)
                p.add_imm(R1, 1)
        p.jump(JA, 0, "tail_done")
    p.label("tail_done")
    p.load_u32(R4, R6, _MSG_SIZE)
    p.store_u64(R9, _TAIL_LEN, R4)


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
        self._entry = ctypes.create_string_buffer(_ENTRY.size)
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
                fds.append(create_map(MAP_HASH, 8, _ENTRY.size, 2 * max_links))
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
        key = _ANNOUNCED.pack(_address(address[0]), _remote_port(address[1]))
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
                entry = _ENTRY.pack(epoch & EPOCH_MASK, 0, 0, 0, peer, keep_tail, 0, 0, 0, b"")
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
        epoch, received, chunks, last_ns, _, _, length, _, overflow, tail = _ENTRY.unpack(self._entry.raw)
        # The tail is written without a lock: read it only while the link is quiet.
        tail = tail[: min(length, TAIL_SIZE)]
        return LinkCounters(received, chunks, last_ns / 1e9, tail, length <= TAIL_SIZE,
                            overflow != 0, epoch == _REFUSED)

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

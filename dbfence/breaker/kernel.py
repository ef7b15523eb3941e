"""Kernel forwarding: admitted connections move their bytes inside the kernel, behind the same fence.

A userspace proxy pays, per query, two wake-ups, four socket syscalls and two copies, and on a small
host that CPU is taken from mysqld (benchmarks/README-gate.md). Once a client has logged in, the
worker hands the pair of sockets (client, mysqld) to the kernel: both go into a BPF ``SOCKHASH``
whose ``sk_skb`` verdict program redirects each received chunk to the other socket's send side.

The program checks the fence before every chunk, like the userspace path does: it loads the fence
word (the agent mirrors it into a one-entry BPF array it maps into its own memory, so renewing is
still one store), and passes a chunk only if ``bpf_ktime_get_ns()`` (CLOCK_MONOTONIC, the agent's
timeline) is before the word's deadline and the word's epoch is the link's. Otherwise it gives the
chunk to the worker (the socket's own receive queue), whose check refuses it and cuts the link. So
the deadline holds even while every dbfence process is frozen: no byte reaches mysqld past it.

The program also keeps per-socket counters (bytes, chunks, last activity) and, for the mysqld side,
the last 64 bytes of the latest chunk, from which a drain reads the reply's transaction status.

The program is assembled here (a few dozen instructions) and loaded with the ``bpf(2)`` syscall
through ctypes: no compiler, headers or BPF library on the host. It needs CAP_BPF and CAP_NET_ADMIN
(root) and a kernel with sockmap (5.13+ for the verdict attach point); :func:`probe` says why not.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import socket
import struct
from dataclasses import dataclass
from typing import Final

from dbfence.breaker.shared import EPOCH_BITS, EPOCH_MASK

_LIBC = ctypes.CDLL(None, use_errno=True)
_SYS_BPF: Final = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine)
_ATTR_SIZE: Final = 144
SO_COOKIE: Final = 57

# bpf(2) commands, map and program types, attach point, helpers (include/uapi/linux/bpf.h).
_MAP_CREATE, _MAP_LOOKUP, _MAP_UPDATE, _MAP_DELETE, _PROG_LOAD, _PROG_ATTACH = 0, 1, 2, 3, 5, 8
_MAP_HASH, _MAP_ARRAY, _MAP_SOCKHASH = 1, 2, 18
_PROG_SK_SKB: Final = 14
_ATTACH_SK_SKB_VERDICT: Final = 38
_F_MMAPABLE: Final = 1 << 10
_CALL_MAP_LOOKUP, _CALL_KTIME_NS, _CALL_SKB_LOAD_BYTES = 1, 5, 26
_CALL_SOCKET_COOKIE, _CALL_SK_REDIRECT_HASH = 46, 72

# One entry per socket in the links map, keyed by the socket's cookie (never reused while the
# system is up). Offsets are shared by the program and by LinkCounters.
_EPOCH, _BYTES, _CHUNKS, _LAST_NS, _PEER, _KEEP_TAIL, _TAIL_LEN, _TAIL = 0, 8, 16, 24, 32, 40, 48, 56
TAIL_SIZE: Final = 64
_VALUE = struct.Struct("=QQQQQQQ64s")
assert _VALUE.size == _TAIL + TAIL_SIZE


class KernelForwardingUnavailable(OSError):
    """This host (kernel, privileges or architecture) cannot forward in the kernel."""


def _bpf(command: int, attr: bytes) -> int:
    if _SYS_BPF is None:
        raise KernelForwardingUnavailable(f"bpf(2) syscall number unknown on {os.uname().machine}")
    buffer = ctypes.create_string_buffer(attr, _ATTR_SIZE)
    result = int(_LIBC.syscall(_SYS_BPF, command, buffer, _ATTR_SIZE))
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


def _map_call(command: int, map_fd: int, key: int, value: ctypes.Array[ctypes.c_char] | None = None) -> None:
    """One map operation on the entry keyed by a cookie (``value`` is read or written)."""
    key_buffer = ctypes.create_string_buffer(struct.pack("=Q", key), 8)  # alive until the call returns
    value_address = ctypes.addressof(value) if value is not None else 0
    _bpf(command, struct.pack("=IIQQQ", map_fd, 0, ctypes.addressof(key_buffer), value_address, 0))


def _create_map(kind: int, key_size: int, value_size: int, entries: int, flags: int = 0) -> int:
    return _bpf(_MAP_CREATE, struct.pack("=IIIII", kind, key_size, value_size, entries, flags))


def socket_cookie(fd: int) -> int:
    """The kernel's id of a socket, the key of its entries in the maps (by descriptor: uvloop
    transports do not lend out their socket objects)."""
    value = ctypes.c_uint64()
    size = ctypes.c_uint32(8)
    if _LIBC.getsockopt(fd, socket.SOL_SOCKET, SO_COOKIE, ctypes.byref(value), ctypes.byref(size)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return value.value


# --- a small assembler ----------------------------------------------------------------------------
R0, R1, R2, R3, R4, R6, R7, R8, R9, FP = 0, 1, 2, 3, 4, 6, 7, 8, 9, 10


class _Program:
    """Instructions with forward jumps to named labels, resolved by :meth:`assemble`."""

    def __init__(self) -> None:
        self._slots: list[bytes | tuple[int, int, int, int, str]] = []
        self._labels: dict[str, int] = {}

    def _emit(self, code: int, dst: int = 0, src: int = 0, offset: int = 0, imm: int = 0) -> None:
        self._slots.append(struct.pack("<BBhi", code, (src << 4) | dst, offset, imm))

    def label(self, name: str) -> None:
        self._labels[name] = len(self._slots)

    def mov(self, dst: int, src: int) -> None:
        self._emit(0xBF, dst, src)

    def mov_imm(self, dst: int, imm: int) -> None:
        self._emit(0xB7, dst, imm=imm)

    def add_imm(self, dst: int, imm: int) -> None:
        self._emit(0x07, dst, imm=imm)

    def rsh_imm(self, dst: int, imm: int) -> None:
        self._emit(0x77, dst, imm=imm)

    def mul_imm(self, dst: int, imm: int) -> None:
        self._emit(0x27, dst, imm=imm)

    def and_imm(self, dst: int, imm: int) -> None:
        self._emit(0x57, dst, imm=imm)

    def load_u64(self, dst: int, src: int, offset: int) -> None:
        self._emit(0x79, dst, src, offset)

    def load_u32(self, dst: int, src: int, offset: int) -> None:
        self._emit(0x61, dst, src, offset)

    def store_u64(self, dst: int, offset: int, src: int) -> None:
        self._emit(0x7B, dst, src, offset)

    def store_u32_imm(self, dst: int, offset: int, imm: int) -> None:
        self._emit(0x62, dst, offset=offset, imm=imm)

    def atomic_add_u64(self, dst: int, offset: int, src: int) -> None:
        self._emit(0xDB, dst, src, offset, 0x00)

    def load_map(self, dst: int, map_fd: int) -> None:
        self._emit(0x18, dst, 1, imm=map_fd)  # BPF_PSEUDO_MAP_FD: the loader swaps in the map
        self._emit(0x00)

    def call(self, helper: int) -> None:
        self._emit(0x85, imm=helper)

    def exit(self) -> None:
        self._emit(0x95)

    def jump(self, code: int, dst: int, target: str, src: int = 0, imm: int = 0) -> None:
        self._slots.append((code, dst, src, imm, target))

    def assemble(self) -> bytes:
        out = []
        for index, slot in enumerate(self._slots):
            if isinstance(slot, tuple):
                code, dst, src, imm, target = slot
                offset = self._labels[target] - index - 1
                out.append(struct.pack("<BBhi", code, (src << 4) | dst, offset, imm))
            else:
                out.append(slot)
        return b"".join(out)


# Conditional jumps (BPF_JMP class): immediate (…5) or register (…d) operand.
_JEQ_IMM, _JNE_REG, _JGE_REG, _JLT_IMM, _JA = 0x15, 0x5D, 0x3D, 0xA5, 0x05
# Any chunk the program will not forward goes to the worker (SK_PASS: into the socket's own receive
# queue), whose own fence check then refuses it and cuts the link. Dropping it would leave the
# client waiting with nobody told.
_SK_PASS: Final = 1


def verdict_program(fence_fd: int, links_fd: int, sockets_fd: int) -> bytes:
    """The sk_skb verdict: fence check, counters, tail copy, redirect to the peer socket."""
    p = _Program()
    p.mov(R6, R1)  # r6 = the skb (context)
    # r7 = the fence word (the map always has its one entry).
    p.load_map(R1, fence_fd)
    p.store_u32_imm(FP, -4, 0)
    p.mov(R2, FP)
    p.add_imm(R2, -4)
    p.call(_CALL_MAP_LOOKUP)
    p.jump(_JEQ_IMM, R0, "to_worker")
    p.load_u64(R7, R0, 0)
    # r8 = deadline in ns (0 when blocked); forward only if now < deadline. The word keeps
    # microseconds, rounded down, so this is never later than the agent's deadline.
    p.mov(R8, R7)
    p.rsh_imm(R8, EPOCH_BITS)
    p.mul_imm(R8, 1000)
    p.call(_CALL_KTIME_NS)
    p.jump(_JGE_REG, R0, "to_worker", src=R8)
    p.mov(R8, R0)  # r8 = now
    # r9 = this socket's entry; none, or one admitted in another epoch: the worker decides.
    p.mov(R1, R6)
    p.call(_CALL_SOCKET_COOKIE)
    p.store_u64(FP, -16, R0)
    p.load_map(R1, links_fd)
    p.mov(R2, FP)
    p.add_imm(R2, -16)
    p.call(_CALL_MAP_LOOKUP)
    p.jump(_JEQ_IMM, R0, "to_worker")
    p.mov(R9, R0)
    p.load_u64(R1, R9, _EPOCH)
    p.mov(R2, R7)
    p.and_imm(R2, EPOCH_MASK)
    p.jump(_JNE_REG, R1, "to_worker", src=R2)
    # Counters: bytes, chunks, last activity.
    p.load_u32(R1, R6, 0)  # skb->len
    p.atomic_add_u64(R9, _BYTES, R1)
    p.mov_imm(R1, 1)
    p.atomic_add_u64(R9, _CHUNKS, R1)
    p.store_u64(R9, _LAST_NS, R8)
    # mysqld's side: keep the chunk's last TAIL_SIZE bytes (all of it if shorter).
    p.load_u64(R1, R9, _KEEP_TAIL)
    p.jump(_JEQ_IMM, R1, "redirect")
    p.load_u32(R4, R6, 0)
    p.store_u64(R9, _TAIL_LEN, R4)  # the whole chunk's length: tells whether the tail is all of it
    p.mov(R3, R9)
    p.add_imm(R3, _TAIL)
    p.jump(_JLT_IMM, R4, "short", imm=TAIL_SIZE)
    p.mov(R2, R4)
    p.add_imm(R2, -TAIL_SIZE)
    p.mov_imm(R4, TAIL_SIZE)
    p.jump(_JA, 0, "copy")
    p.label("short")
    p.jump(_JLT_IMM, R4, "redirect", imm=1)
    p.mov_imm(R2, 0)
    p.label("copy")
    p.mov(R1, R6)
    p.call(_CALL_SKB_LOAD_BYTES)
    # Send it out of the peer socket (its entry is keyed by this socket's peer's cookie).
    p.label("redirect")
    p.load_u64(R1, R9, _PEER)
    p.store_u64(FP, -24, R1)
    p.mov(R1, R6)
    p.load_map(R2, sockets_fd)
    p.mov(R3, FP)
    p.add_imm(R3, -24)
    p.mov_imm(R4, 0)  # flags 0: the peer's egress, i.e. send it to mysqld (or the client)
    p.call(_CALL_SK_REDIRECT_HASH)
    p.exit()
    p.label("to_worker")
    p.mov_imm(R0, _SK_PASS)
    p.exit()
    return p.assemble()


def _load_program(instructions: bytes) -> int:
    code = ctypes.create_string_buffer(instructions, len(instructions))
    license_text = ctypes.create_string_buffer(b"GPL")  # the redirect helpers are GPL-only
    log = ctypes.create_string_buffer(1 << 16)
    attr = struct.pack(
        "=IIQQIIQ",
        _PROG_SK_SKB,
        len(instructions) // 8,
        ctypes.addressof(code),
        ctypes.addressof(license_text),
        1,  # log level: the verifier says why it refused
        len(log),
        ctypes.addressof(log),
    )
    try:
        return _bpf(_PROG_LOAD, attr)
    except OSError as error:
        detail = log.value.decode("ascii", "replace").strip().splitlines()[-3:]
        message = f"BPF program refused: {error.strerror}; {' | '.join(detail)}"
        raise KernelForwardingUnavailable(error.errno, message) from None


@dataclass(frozen=True)
class LinkCounters:
    """What the kernel counted for one socket: received bytes and chunks, last chunk, its tail."""

    received: int  # bytes
    chunks: int
    last_active: float  # monotonic seconds; 0.0 if nothing passed yet
    tail: bytes  # the last chunk's last TAIL_SIZE bytes (mysqld's side only)
    tail_complete: bool  # the tail is the whole last chunk (it was at most TAIL_SIZE bytes)


class KernelForwarder:
    """The maps and the program. The agent creates them; workers get the descriptors."""

    def __init__(self, fence_fd: int, links_fd: int, sockets_fd: int, program_fd: int) -> None:
        self.fence_fd = fence_fd
        self.links_fd = links_fd
        self.sockets_fd = sockets_fd
        self.program_fd = program_fd
        self._fence_map: mmap.mmap | None = None
        self._value = ctypes.create_string_buffer(_VALUE.size)

    @classmethod
    def create(cls, max_links: int) -> KernelForwarder:
        """Make the maps, load and attach the program; raises KernelForwardingUnavailable."""
        fds: list[int] = []
        try:
            try:
                fds.append(_create_map(_MAP_ARRAY, 4, 8, 1, _F_MMAPABLE))
                fds.append(_create_map(_MAP_HASH, 8, _VALUE.size, 2 * max_links))
                fds.append(_create_map(_MAP_SOCKHASH, 8, 4, 2 * max_links))
            except OSError as error:
                message = f"cannot create BPF maps: {error.strerror}"
                raise KernelForwardingUnavailable(error.errno, message) from None
            fds.append(_load_program(verdict_program(*fds)))
            try:
                _bpf(_PROG_ATTACH, struct.pack("=IIII", fds[2], fds[3], _ATTACH_SK_SKB_VERDICT, 0))
            except OSError as error:
                message = f"cannot attach the verdict program: {error.strerror}"
                raise KernelForwardingUnavailable(error.errno, message) from None
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return cls(*fds)

    def descriptors(self) -> tuple[int, int, int, int]:
        return (self.fence_fd, self.links_fd, self.sockets_fd, self.program_fd)

    def close(self) -> None:
        if self._fence_map is not None:
            self._fence_map.close()
            self._fence_map = None
        for fd in self.descriptors():
            os.close(fd)

    # --- the agent's side -------------------------------------------------------------------
    def fence_words(self) -> memoryview:
        """The fence word as the program reads it, mapped into this process (one 8-byte store)."""
        if self._fence_map is None:
            protection = mmap.PROT_READ | mmap.PROT_WRITE
            self._fence_map = mmap.mmap(self.fence_fd, mmap.PAGESIZE, mmap.MAP_SHARED, protection)
        return memoryview(self._fence_map).cast("Q")

    # --- a worker's side ----------------------------------------------------------------------
    def splice(self, client_fd: int, backend_fd: int, epoch: int) -> tuple[int, int]:
        """Hand a logged-in link to the kernel; returns the two cookies (client's, mysqld's).

        Call it only while both receive queues are empty and neither side may speak first (the
        worker does so just before passing mysqld's login OK to the client): a chunk queued
        before the hand-off would be read by the worker and could overtake one the kernel sends.
        """
        client_cookie, backend_cookie = socket_cookie(client_fd), socket_cookie(backend_fd)
        pairs = ((client_cookie, backend_cookie, 0), (backend_cookie, client_cookie, 1))
        for own, peer, keep_tail in pairs:
            value = _VALUE.pack(epoch & EPOCH_MASK, 0, 0, 0, peer, keep_tail, 0, b"")
            self._update(self.links_fd, own, ctypes.create_string_buffer(value, len(value)))
        try:
            # Entries first, sockets last: a socket with no entry would have its chunks go to the worker.
            for own, fd in ((client_cookie, client_fd), (backend_cookie, backend_fd)):
                self._update(self.sockets_fd, own, ctypes.create_string_buffer(struct.pack("=I", fd), 4))
        except OSError:
            self.forget((client_cookie, backend_cookie))
            raise
        return client_cookie, backend_cookie

    def counters(self, cookie: int) -> LinkCounters | None:
        """The socket's counters, or None once its entry is gone."""
        try:
            _map_call(_MAP_LOOKUP, self.links_fd, cookie, self._value)
        except FileNotFoundError:
            return None
        _, received, chunks, last_ns, _, _, chunk_len, tail = _VALUE.unpack(self._value.raw)
        # The tail is written without a lock: read it only while the link is quiet.
        tail = tail[: min(chunk_len, TAIL_SIZE)]
        return LinkCounters(received, chunks, last_ns / 1e9, tail, chunk_len <= TAIL_SIZE)

    def forget(self, cookies: tuple[int, ...]) -> None:
        """Drop the entries of closed sockets (the sockhash forgets a socket when it closes)."""
        for cookie in cookies:
            with contextlib.suppress(FileNotFoundError):
                _map_call(_MAP_DELETE, self.links_fd, cookie)

    @staticmethod
    def _update(map_fd: int, cookie: int, value: ctypes.Array[ctypes.c_char]) -> None:
        _map_call(_MAP_UPDATE, map_fd, cookie, value)


def probe() -> str | None:
    """None if this host can forward in the kernel, else why not (for the status and the logs)."""
    try:
        KernelForwarder.create(1).close()
    except OSError as error:
        return str(error)
    return None

"""The BPF programs of kernel forwarding, and the layouts they share with the maps' readers.

Assembled here with :class:`dbfence.breaker.bpf.Program`; loaded and attached by
:class:`dbfence.breaker.kernel.KernelForwarder`, whose docstring says what they do and why.
"""

from __future__ import annotations

import socket
import struct
from typing import Final

from dbfence.breaker.bpf import (
    CALL_KTIME_NS,
    CALL_MAP_LOOKUP,
    CALL_MSG_PULL_DATA,
    CALL_MSG_REDIRECT_HASH,
    CALL_NETNS_COOKIE,
    CALL_SOCK_HASH_UPDATE,
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
    Program,
)
from dbfence.breaker.shared import EPOCH_BITS, EPOCH_MASK

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
ENTRY = struct.Struct("=QQQQQQQQQ64s")
assert ENTRY.size == _TAIL + TAIL_SIZE
REFUSED_EPOCH: Final = (1 << 64) - 1  # the epoch of a refused link: no fence word carries it

# struct bpf_sock_ops and struct sk_msg_md (include/uapi/linux/bpf.h): where the four-tuple is.
_OPS_OP, _OPS_FAMILY, _OPS_REMOTE_IP, _OPS_LOCAL_IP, _OPS_REMOTE_PORT, _OPS_LOCAL_PORT = 0, 20, 24, 28, 64, 68
_MSG_DATA, _MSG_DATA_END, _MSG_FAMILY, _MSG_REMOTE_IP, _MSG_LOCAL_IP = 0, 8, 16, 20, 24
_MSG_REMOTE_PORT, _MSG_LOCAL_PORT, _MSG_SIZE = 60, 64, 68
_OPS_ACTIVE_ESTABLISHED, _OPS_PASSIVE_ESTABLISHED = 4, 5
_F_INGRESS: Final = 1
_SK_PASS: Final = 1


def remote_port(port: int) -> int:
    """A remote port as both program contexts present it: network order, in the upper half."""
    return socket.htons(port) << 16


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
    p.jump(JNE32_IMM, R1, "out", imm=remote_port(gate_port))
    p.jump(JA, 0, "keep")
    p.label("passive")  # mysqld accepting a connection from an announced backend socket
    p.load_u32(R1, FP, -8)
    p.jump(JNE_IMM, R1, "out", imm=backend_port)
    p.map_lookup(announced_fd, FP, -24)
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
    p.map_lookup(routes_fd, FP, -16)
    p.jump(JEQ_IMM, R0, "pass")  # not joined: TCP, as always
    p.mov(R7, R0)  # r7 = the route
    p.map_lookup(links_fd, R7)  # its first field is the entry's key
    p.jump(JEQ_IMM, R0, "pass")
    p.mov(R9, R0)  # r9 = this direction's entry
    _fence_check(p, fence_fd)  # r8 = now
    # This side spoke: the other direction's budget starts again.
    p.map_lookup(links_fd, R9, _PEER)
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

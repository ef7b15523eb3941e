"""The remote path's packet filter: two tc programs that fence, packet by packet, clients of other hosts.

The remote path (:mod:`dbfence.breaker.passthrough`) lets the kernel forward a remote client's
connection to the gate's port straight to mysqld (nftables DNAT, conntrack), with no relay. These
programs keep the fence on those flows. They sit on the tcx hooks of the host's outside interfaces:

* **ingress** runs before netfilter's prerouting hook, so it sees a packet as the client sent it:
  to this host's address and the **gate's port** (before DNAT);
* **egress** runs after netfilter's postrouting hook, where conntrack has already put the reply's
  source back, so it sees mysqld's reply as coming from the **gate's port** (after un-DNAT).

So both programs recognise a flow by the gate's port alone, in both directions, and nothing that
does not use the gate's port (replication, the agent's own sessions, monitoring: they reach mysqld
at its own port) is ever looked at. Each flow is keyed by (client address, local address, client
port, gate port), as the ingress side sees it.

At a client's SYN, ingress reads the fence word (the same word the workers read: lease deadline in
µs on CLOCK_MONOTONIC and the block epoch; the agent mirrors it into a one-entry BPF array it has
mapped, so renewing stays one store; its second word says whether new flows may start, 0 while
the gate drains, and its third the room left under the gate's backend cap, one taken per flow). If
``bpf_ktime_get_ns()`` is before the deadline (and new flows may start, and there is room) it records
the flow as *passthrough* with the current epoch, then sets :data:`PASS_MARK` in the packet's mark:
the nftables rule DNATs only marked SYNs, and conntrack remembers the decision for the flow. If the
fence says no, the flow is recorded as *worker* and left unmarked: the SYN reaches the gate's
worker, which answers with the MySQL ERR packet (1290) as it always did. Every later packet of a
passthrough flow, either way, passes only while ``now < deadline`` and the flow's epoch is the
fence word's; otherwise it is dropped. Dropped, not queued: TCP end to end then retransmits into
the void until the agent destroys the sockets. Worker flows pass (the worker fences them itself).

A packet of the gate's port whose flow is not in the map is dropped (fail-safe: an entry can only be
missing if the map was full at its SYN, or the flow predates the programs). RSTs always pass: they
carry nothing to either application, and they are how destroyed sockets tell the other side.

An IPv4 fragment at offset 0 of the gate's port is dropped, so no reassembled packet can slip past
the per-packet check (Linux TCP sets DF; fragments do not occur on a sane path); later fragments
cannot be reassembled without it. IPv6 is not filtered and not forwarded (no DNAT rule for it):
those clients reach the worker.
"""

from __future__ import annotations

import socket
import struct
from typing import Final

from dbfence.breaker.bpf import (
    CALL_KTIME_NS,
    CALL_MAP_UPDATE,
    CALL_SKB_LOAD_BYTES,
    FP,
    JA,
    JEQ_IMM,
    JGE_REG,
    JNE_IMM,
    JNE_REG,
    JSET_IMM,
    JSLE_IMM,
    R0,
    R1,
    R2,
    R3,
    R4,
    R6,
    R7,
    R8,
    R9,
    Program,
)
from dbfence.breaker.shared import EPOCH_BITS, EPOCH_MASK

# The bit the ingress program sets on an admitted SYN; the DNAT rule matches it. Chosen clear of
# the bits kube-proxy (0x4000, 0x8000) uses; configurable hosts can move it (passthrough.py).
PASS_MARK: Final = 0x0100_0000

# A flow's key: client IPv4, local IPv4 (network order as on the wire), client port, gate port
# (each as the wire's two bytes read into a little-endian u16), 4 bytes zero.
FLOW_KEY = struct.Struct("=IIHHI")
# A flow: admission epoch, mode (1 passthrough, 0 worker), last packet (ns, CLOCK_MONOTONIC),
# seen flags (FIN in / FIN out / RST).
FLOW_VALUE = struct.Struct("=QQQQ")
MODE_WORKER, MODE_PASSTHROUGH = 0, 1
SEEN_FIN_IN, SEEN_FIN_OUT, SEEN_RST = 1, 2, 4
_EPOCH, _MODE, _LAST_NS, _SEEN = 0, 8, 16, 24

# struct __sk_buff: mark and protocol. tcx verdicts.
_SKB_MARK, _SKB_PROTOCOL = 8, 16
_TCX_NEXT, _TCX_DROP = -1, 2
_ETH_HLEN: Final = 14
_TCP_FIN, _TCP_SYN, _TCP_RST, _TCP_ACK = 0x01, 0x02, 0x04, 0x10

# Stack: IP header at fp-64 (20 bytes), TCP header at fp-40 (14 bytes), the key at fp-16,
# a new flow's value at fp-96, the fence key at fp-100, the fence epoch at fp-112, now at fp-120.
_IP, _TCP, _KEY, _VALUE, _FENCE_KEY, _FENCE_EPOCH, _NOW = -64, -40, -16, -96, -100, -112, -120


def _wire_u16(value: int) -> int:
    """A 16-bit field as a little-endian load of its two wire bytes sees it."""
    return int(struct.unpack("<H", struct.pack("!H", value))[0])


def filter_program(ingress: bool, fence_fd: int, flows_fd: int, gate_port: int) -> bytes:
    """The ingress or egress program (see the module docstring)."""
    p = Program()
    p.mov(R6, R1)
    p.store_u64_imm(FP, _NOW, 0)
    p.store_u64_imm(FP, _FENCE_EPOCH, 0)
    p.load_u32(R1, R6, _SKB_PROTOCOL)
    p.jump(JNE_IMM, R1, "next", imm=_wire_u16(0x0800))
    _load_bytes(p, _ETH_HLEN, _IP, 20)
    p.load_u8(R1, FP, _IP + 9)
    p.jump(JNE_IMM, R1, "next", imm=socket.IPPROTO_TCP)
    p.load_u16(R1, FP, _IP + 6)
    p.jump(JSET_IMM, R1, "next", imm=_wire_u16(0x1FFF))  # a later fragment: harmless alone
    p.load_u8(R7, FP, _IP)
    p.and_imm(R7, 0x0F)
    p.lsh_imm(R7, 2)
    p.add_imm(R7, _ETH_HLEN)
    p.mov(R2, R7)
    _load_bytes(p, None, _TCP, 14)
    # The gate's port, on the side the direction puts it; then the key, client first.
    local_port, client_port = (_TCP + 2, _TCP) if ingress else (_TCP, _TCP + 2)
    client_ip, local_ip = (_IP + 12, _IP + 16) if ingress else (_IP + 16, _IP + 12)
    p.load_u16(R1, FP, local_port)
    p.jump(JNE_IMM, R1, "next", imm=_wire_u16(gate_port))
    p.load_u16(R1, FP, _IP + 6)
    p.jump(JSET_IMM, R1, "drop", imm=_wire_u16(0x2000))  # a first fragment: never reassembled
    for key_offset, (load, store, source) in enumerate(
        ((p.load_u32, p.store_u32, client_ip), (p.load_u32, p.store_u32, local_ip))
    ):
        load(R1, FP, source)
        store(FP, _KEY + 4 * key_offset, R1)
    p.load_u16(R1, FP, client_port)
    p.store_u16(FP, _KEY + 8, R1)
    p.load_u16(R1, FP, local_port)
    p.store_u16(FP, _KEY + 10, R1)
    p.store_u32_imm(FP, _KEY + 12, 0)
    p.load_u8(R8, FP, _TCP + 13)  # r8 = the TCP flags
    p.map_lookup(flows_fd, FP, _KEY)
    p.mov(R9, R0)  # r9 = the flow, or 0
    p.jump(JSET_IMM, R8, "reset", imm=_TCP_RST)
    if ingress:
        p.mov(R1, R8)
        p.and_imm(R1, _TCP_SYN | _TCP_ACK)
        p.jump(JEQ_IMM, R1, "syn", imm=_TCP_SYN)
    p.jump(JEQ_IMM, R9, "drop")  # no record of this flow: fail safe
    p.load_u64(R1, R9, _MODE)
    p.jump(JNE_IMM, R1, "next", imm=MODE_PASSTHROUGH)  # a worker's flow: the worker fences it
    _fence(p, fence_fd, "drop")
    p.load_u64(R1, R9, _EPOCH)
    p.load_u64(R2, FP, _FENCE_EPOCH)
    p.jump(JNE_REG, R1, "drop", src=R2)
    p.load_u64(R1, FP, _NOW)
    p.store_u64(R9, _LAST_NS, R1)
    p.jump(JSET_IMM, R8, "fin", imm=_TCP_FIN)
    p.jump(JA, 0, "next")
    p.label("fin")
    _set_seen(p, SEEN_FIN_IN if ingress else SEEN_FIN_OUT)
    p.jump(JA, 0, "next")
    p.label("reset")
    p.jump(JEQ_IMM, R9, "next")
    _set_seen(p, SEEN_RST)
    p.jump(JA, 0, "next")
    if ingress:
        _syn(p, fence_fd, flows_fd)
    p.label("drop")
    p.mov_imm(R0, _TCX_DROP)
    p.exit()
    p.label("next")
    p.mov_imm(R0, _TCX_NEXT)
    p.exit()
    return p.assemble()


def _syn(p: Program, fence_fd: int, flows_fd: int) -> None:
    """A client's SYN: admit (record passthrough, mark for DNAT) or leave it to the worker."""
    p.label("syn")
    p.jump(JEQ_IMM, R9, "new_flow")
    p.load_u64(R1, R9, _MODE)
    p.jump(JNE_IMM, R1, "new_flow", imm=MODE_PASSTHROUGH)
    # A SYN on a passthrough flow (a retransmission, or the tuple reused): only within its epoch.
    _fence(p, fence_fd, "drop")
    p.load_u64(R1, R9, _EPOCH)
    p.load_u64(R2, FP, _FENCE_EPOCH)
    p.jump(JNE_REG, R1, "drop", src=R2)
    p.jump(JA, 0, "mark")
    p.label("new_flow")
    p.store_u64_imm(FP, _VALUE + _SEEN, 0)
    _fence(p, fence_fd, "to_worker")  # stores now either way: the flow's birth, for the sweep
    # The array's second word: 1 while new flows may be admitted (0 while draining).
    _fence_word(p, fence_fd, 1)
    p.jump(JEQ_IMM, R0, "to_worker")
    p.load_u64(R1, R0, 0)
    p.jump(JEQ_IMM, R1, "to_worker")
    # The third word: room for more forwarded flows under the gate's backend cap (the agent
    # refreshes it). Take one; none left (or below zero): the worker, which counts its own.
    _fence_word(p, fence_fd, 2)
    p.jump(JEQ_IMM, R0, "to_worker")
    p.mov_imm(R1, -1)
    p.atomic_fetch_add_u64(R0, 0, R1)
    p.jump(JSLE_IMM, R1, "to_worker", imm=0)
    p.load_u64(R1, FP, _FENCE_EPOCH)
    p.store_u64(FP, _VALUE + _EPOCH, R1)
    p.store_u64_imm(FP, _VALUE + _MODE, MODE_PASSTHROUGH)
    _record(p, flows_fd)
    p.label("mark")
    p.load_u32(R1, R6, _SKB_MARK)
    p.or_imm(R1, PASS_MARK)
    p.store_u32(R6, _SKB_MARK, R1)
    p.jump(JA, 0, "next")
    p.label("to_worker")
    p.store_u64_imm(FP, _VALUE + _EPOCH, 0)
    p.store_u64_imm(FP, _VALUE + _MODE, MODE_WORKER)
    _record(p, flows_fd)
    p.jump(JA, 0, "next")


def _record(p: Program, flows_fd: int) -> None:
    """flows[key] = the value at fp+_VALUE (stamped now); a full map drops the SYN (it is retried)."""
    p.load_u64(R1, FP, _NOW)
    p.store_u64(FP, _VALUE + _LAST_NS, R1)
    p.load_map(R1, flows_fd)
    p.mov(R2, FP)
    p.add_imm(R2, _KEY)
    p.mov(R3, FP)
    p.add_imm(R3, _VALUE)
    p.mov_imm(R4, 0)
    p.call(CALL_MAP_UPDATE)
    p.jump(JNE_IMM, R0, "drop", imm=0)


def _set_seen(p: Program, bit: int) -> None:
    p.load_u64(R1, R9, _SEEN)
    p.or_imm(R1, bit)
    p.store_u64(R9, _SEEN, R1)


def _load_bytes(p: Program, offset: int | None, stack: int, length: int) -> None:
    """bpf_skb_load_bytes(skb, offset or r2, fp+stack, length); a short packet is not ours."""
    p.mov(R1, R6)
    if offset is not None:
        p.mov_imm(R2, offset)
    p.mov(R3, FP)
    p.add_imm(R3, stack)
    p.mov_imm(R4, length)
    p.call(CALL_SKB_LOAD_BYTES)
    p.jump(JNE_IMM, R0, "next", imm=0)


def _fence_word(p: Program, fence_fd: int, word: int) -> None:
    """r0 = the address of the fence array's word ``word`` (NULL only beyond the array)."""
    p.store_u32_imm(FP, _FENCE_KEY, word)
    p.map_lookup(fence_fd, FP, _FENCE_KEY)


def _fence(p: Program, fence_fd: int, refuse: str) -> None:
    """Jump to ``refuse`` unless now < the fence's deadline; stores the fence's epoch and now."""
    _fence_word(p, fence_fd, 0)
    p.jump(JEQ_IMM, R0, refuse)  # never: the array has its one entry
    p.load_u64(R7, R0, 0)
    p.mov(R1, R7)
    p.and_imm(R1, EPOCH_MASK)
    p.store_u64(FP, _FENCE_EPOCH, R1)
    p.rsh_imm(R7, EPOCH_BITS)
    p.mul_imm(R7, 1000)  # the deadline in ns; 0 when blocked
    p.call(CALL_KTIME_NS)
    p.store_u64(FP, _NOW, R0)
    p.jump(JGE_REG, R0, refuse, src=R7)

"""Just enough of bpf(2) for the gate: maps, a small assembler, loading and attaching programs.

Called through ctypes, so the host needs no compiler, kernel headers or BPF library. Numbers are
from include/uapi/linux/bpf.h.
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import Final

_LIBC = ctypes.CDLL(None, use_errno=True)
_SYS_BPF: Final = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine)
_ATTR_SIZE: Final = 144

MAP_CREATE, MAP_LOOKUP, MAP_UPDATE, MAP_DELETE, MAP_GET_NEXT_KEY = 0, 1, 2, 3, 4
PROG_LOAD, PROG_ATTACH, PROG_DETACH = 5, 8, 9
PROG_GET_FD_BY_ID, MAP_GET_FD_BY_ID, OBJ_GET_INFO_BY_FD, PROG_QUERY, LINK_CREATE = 13, 14, 15, 16, 28
MAP_HASH, MAP_ARRAY, MAP_SOCKHASH = 1, 2, 18
PROG_SCHED_CLS, PROG_SOCK_OPS, PROG_SK_MSG = 3, 13, 16
ATTACH_CGROUP_SOCK_OPS, ATTACH_SK_MSG_VERDICT, ATTACH_TCX_INGRESS, ATTACH_TCX_EGRESS = 3, 7, 46, 47
F_MMAPABLE: Final = 1 << 10

# Helpers.
CALL_MAP_LOOKUP, CALL_MAP_UPDATE, CALL_KTIME_NS, CALL_SKB_LOAD_BYTES, CALL_MSG_PULL_DATA = 1, 2, 5, 26, 63
CALL_SOCK_HASH_UPDATE, CALL_MSG_REDIRECT_HASH, CALL_NETNS_COOKIE = 70, 71, 122

# Registers, and jumps (BPF_JMP class; JMP32 compares the low 32 bits, no sign extension).
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, FP = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
JEQ_IMM, JNE_IMM, JGT_IMM, JLT_IMM, JSET_IMM, JA = 0x15, 0x55, 0x25, 0xA5, 0x45, 0x05
JNE_REG, JGE_REG, JGT_REG = 0x5D, 0x3D, 0x2D
JSLE_IMM: Final = 0xD5  # signed <=
JNE32_IMM: Final = 0x56


class BpfUnavailable(OSError):
    """This host (kernel, privileges or architecture) cannot do what was asked of bpf(2)."""


def bpf(command: int, attr: bytes) -> int:
    if _SYS_BPF is None:
        raise BpfUnavailable(f"bpf(2) syscall number unknown on {os.uname().machine}")
    buffer = ctypes.create_string_buffer(attr, _ATTR_SIZE)
    result = int(_LIBC.syscall(_SYS_BPF, command, buffer, _ATTR_SIZE))
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


def create_map(kind: int, key_size: int, value_size: int, entries: int, flags: int = 0) -> int:
    return bpf(MAP_CREATE, struct.pack("=IIIII", kind, key_size, value_size, entries, flags))


def _map_call(command: int, map_fd: int, key: ctypes.Array[ctypes.c_char],
              value: ctypes.Array[ctypes.c_char]) -> None:
    bpf(command, struct.pack("=IIQQQ", map_fd, 0, ctypes.addressof(key), ctypes.addressof(value), 0))


def map_update(map_fd: int, key: bytes, value: bytes) -> None:
    key_buffer = ctypes.create_string_buffer(key, len(key))  # alive until the call returns
    value_buffer = ctypes.create_string_buffer(value, len(value))
    _map_call(MAP_UPDATE, map_fd, key_buffer, value_buffer)


def map_lookup(map_fd: int, key: bytes, value: ctypes.Array[ctypes.c_char]) -> None:
    """Read the entry into ``value``; FileNotFoundError if there is none."""
    key_buffer = ctypes.create_string_buffer(key, len(key))
    _map_call(MAP_LOOKUP, map_fd, key_buffer, value)


def map_delete(map_fd: int, key: bytes) -> bool:
    """Remove the entry; False if there was none."""
    key_buffer = ctypes.create_string_buffer(key, len(key))
    try:
        bpf(MAP_DELETE, struct.pack("=IIQQQ", map_fd, 0, ctypes.addressof(key_buffer), 0, 0))
    except FileNotFoundError:
        return False
    return True


def load_program(instructions: bytes, kind: int, name: str) -> int:
    """Load a program (named, so ``bpftool prog`` shows whose it is); the verifier's reason on refusal."""
    code = ctypes.create_string_buffer(instructions, len(instructions))
    license_text = ctypes.create_string_buffer(b"GPL")  # the redirect helpers are GPL-only
    log = ctypes.create_string_buffer(1 << 20)
    attr = struct.pack(
        "=IIQQIIQII16s",
        kind,
        len(instructions) // 8,
        ctypes.addressof(code),
        ctypes.addressof(license_text),
        1,  # log level: the verifier says why it refused
        len(log),
        ctypes.addressof(log),
        0,
        0,
        name.encode("ascii")[:15],
    )
    try:
        return bpf(PROG_LOAD, attr)
    except OSError as error:
        detail = log.value.decode("ascii", "replace").strip().splitlines()[-3:]
        message = f"BPF program refused: {error.strerror}; {' | '.join(detail)}"
        raise BpfUnavailable(error.errno, message) from None


def program_id(program_fd: int) -> int:
    """The kernel-wide id of a loaded program (what ``bpftool prog`` lists)."""
    info = ctypes.create_string_buffer(64)
    bpf(OBJ_GET_INFO_BY_FD, struct.pack("=IIQ", program_fd, len(info), ctypes.addressof(info)))
    return int(struct.unpack_from("=I", info.raw, 4)[0])


def map_next_key(map_fd: int, key: bytes | None, size: int) -> bytes | None:
    """The key after ``key`` (the first one for None); None past the last."""
    key_buffer = ctypes.create_string_buffer(key or b"\0" * size, size)
    next_buffer = ctypes.create_string_buffer(size)
    key_pointer = ctypes.addressof(key_buffer) if key is not None else 0
    try:
        bpf(MAP_GET_NEXT_KEY, struct.pack("=IIQQ", map_fd, 0, key_pointer, ctypes.addressof(next_buffer)))
    except FileNotFoundError:
        return None
    return next_buffer.raw


def program_info(program_fd: int) -> tuple[int, str, list[int]]:
    """A loaded program's id, name and the ids of the maps it uses."""
    map_ids = (ctypes.c_uint32 * 16)()
    info = ctypes.create_string_buffer(struct.pack("=52xIQ", 16, ctypes.addressof(map_ids)), 128)
    bpf(OBJ_GET_INFO_BY_FD, struct.pack("=IIQ", program_fd, len(info), ctypes.addressof(info)))
    identifier, = struct.unpack_from("=I", info.raw, 4)
    count, = struct.unpack_from("=I", info.raw, 52)
    name = info.raw[64:80].split(b"\0", 1)[0].decode("ascii", "replace")
    return int(identifier), name, [int(map_ids[i]) for i in range(min(count, 16))]


def program_by_id(identifier: int) -> int:
    """A descriptor of the program with this id (FileNotFoundError once it is gone)."""
    return bpf(PROG_GET_FD_BY_ID, struct.pack("=I", identifier))


def map_by_id(identifier: int) -> int:
    return bpf(MAP_GET_FD_BY_ID, struct.pack("=I", identifier))


def attached_programs(ifindex: int, attach_type: int) -> list[int]:
    """The ids of the programs attached to an interface's tcx hook (this network namespace)."""
    ids = (ctypes.c_uint32 * 64)()
    attr = struct.pack("=IIIIQI", ifindex, attach_type, 0, 0, ctypes.addressof(ids), 64)
    buffer = ctypes.create_string_buffer(attr, _ATTR_SIZE)
    if _SYS_BPF is None:
        raise BpfUnavailable(f"bpf(2) syscall number unknown on {os.uname().machine}")
    if int(_LIBC.syscall(_SYS_BPF, PROG_QUERY, buffer, _ATTR_SIZE)) < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    count, = struct.unpack_from("=I", buffer.raw, 24)
    return [int(ids[i]) for i in range(min(count, 64))]


def program_exists(identifier: int) -> bool:
    try:
        fd = bpf(PROG_GET_FD_BY_ID, struct.pack("=I", identifier))
    except FileNotFoundError:
        return False
    os.close(fd)
    return True


class Program:
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

    def add(self, dst: int, src: int) -> None:
        self._emit(0x0F, dst, src)

    def add_imm(self, dst: int, imm: int) -> None:
        self._emit(0x07, dst, imm=imm)

    def rsh_imm(self, dst: int, imm: int) -> None:
        self._emit(0x77, dst, imm=imm)

    def lsh_imm(self, dst: int, imm: int) -> None:
        self._emit(0x67, dst, imm=imm)

    def or_imm(self, dst: int, imm: int) -> None:
        self._emit(0x47, dst, imm=imm)

    def mul_imm(self, dst: int, imm: int) -> None:
        self._emit(0x27, dst, imm=imm)

    def and_imm(self, dst: int, imm: int) -> None:
        self._emit(0x57, dst, imm=imm)

    def load_u8(self, dst: int, src: int, offset: int) -> None:
        self._emit(0x71, dst, src, offset)

    def load_u16(self, dst: int, src: int, offset: int) -> None:
        self._emit(0x69, dst, src, offset)

    def load_u32(self, dst: int, src: int, offset: int) -> None:
        self._emit(0x61, dst, src, offset)

    def load_u64(self, dst: int, src: int, offset: int) -> None:
        self._emit(0x79, dst, src, offset)

    def store_u8(self, dst: int, offset: int, src: int) -> None:
        self._emit(0x73, dst, src, offset)

    def store_u16(self, dst: int, offset: int, src: int) -> None:
        self._emit(0x6B, dst, src, offset)

    def store_u32(self, dst: int, offset: int, src: int) -> None:
        self._emit(0x63, dst, src, offset)

    def store_u64(self, dst: int, offset: int, src: int) -> None:
        self._emit(0x7B, dst, src, offset)

    def store_u32_imm(self, dst: int, offset: int, imm: int) -> None:
        self._emit(0x62, dst, offset=offset, imm=imm)

    def store_u64_imm(self, dst: int, offset: int, imm: int) -> None:
        self._emit(0x7A, dst, offset=offset, imm=imm)

    def atomic_add_u64(self, dst: int, offset: int, src: int) -> None:
        self._emit(0xDB, dst, src, offset, 0x00)

    def atomic_fetch_add_u64(self, dst: int, offset: int, src: int) -> None:
        """*(u64 *)(dst + offset) += src, and src = the value before (BPF_ADD | BPF_FETCH)."""
        self._emit(0xDB, dst, src, offset, 0x01)

    def load_imm64(self, dst: int, value: int) -> None:
        low, high = value & 0xFFFFFFFF, (value >> 32) & 0xFFFFFFFF
        self._emit(0x18, dst, imm=_signed(low))
        self._emit(0x00, imm=_signed(high))

    def load_map(self, dst: int, map_fd: int) -> None:
        self._emit(0x18, dst, 1, imm=map_fd)  # BPF_PSEUDO_MAP_FD: the loader swaps in the map
        self._emit(0x00)

    def call(self, helper: int) -> None:
        self._emit(0x85, imm=helper)

    def map_lookup(self, map_fd: int, key: int, key_offset: int = 0) -> None:
        """``r0 = bpf_map_lookup_elem(map, key + key_offset)`` (NULL when absent); clobbers r1-r5."""
        self.load_map(R1, map_fd)
        self.mov(R2, key)
        if key_offset:
            self.add_imm(R2, key_offset)
        self.call(CALL_MAP_LOOKUP)

    def exit(self) -> None:
        self._emit(0x95)

    def jump(self, code: int, dst: int, target: str, src: int = 0, imm: int = 0) -> None:
        self._slots.append((code, dst, src, _signed(imm), target))

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


def _signed(value: int) -> int:
    """A 32-bit constant as the signed immediate an instruction encodes."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value

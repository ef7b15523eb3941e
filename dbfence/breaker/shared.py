"""The small shared-memory record the agent writes and every gate worker reads.

Layout (native byte order, 16 KiB from ``memfd_create``):

* word 0, the **fence word**: ``(deadline_us << EPOCH_BITS) | (epoch & EPOCH_MASK)``. It is the only
  thing the data path reads, once per forwarded chunk. Being one aligned 8-byte word, it is written
  and read with single 8-byte stores/loads, so a reader can never see a deadline from one write and
  an epoch from another. ``deadline_us`` is the lease deadline on the CLOCK_MONOTONIC timeline
  (system-wide on Linux, so comparable across processes), rounded *down* to a microsecond; 0 means
  blocked. 50 bits of microseconds cover 35 years of uptime; the 14-bit epoch generation tells a
  connection that a block happened since it was admitted.
* a status record (state, full epoch, reason, drain end) behind a seqlock, read off the hot path
  (refusing a client, answering status).
* the **backend cap** (written by the agent) and a process-shared POSIX semaphore that counts the
  backend connections every worker holds. A worker takes a slot *before* it opens a backend
  connection: it increments the count (``sem_post``, an atomic read-modify-write), then reads it
  back; above the cap it gives the slot back and refuses the client. Increment-then-check can only
  refuse too many, never admit too many: when the last admitted link read the count, every other
  link still held had already incremented it, so the number held never exceeds the cap, whatever
  the workers do at the same time. A plain per-worker counter could not promise this (a store
  followed by loads of the other workers' counters may be reordered, even on x86).
* one 64-byte slot per worker, each written only by its worker: open connection count, totals.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import os
import struct
import time
from dataclasses import dataclass
from typing import Final

EPOCH_BITS: Final = 14
EPOCH_MASK: Final = (1 << EPOCH_BITS) - 1
MAX_DEADLINE_US: Final = (1 << (64 - EPOCH_BITS)) - 1

STATE_BLOCKING: Final = 0
STATE_ADMITTING: Final = 1
STATE_DRAINING: Final = 2

SIZE: Final = 16384
_SEQ_OFFSET: Final = 8
_STATUS = struct.Struct("=QQdd")  # state, epoch, drain_until, deadline (informational)
_STATUS_OFFSET: Final = 16
_REASON_LEN_OFFSET: Final = 48
_REASON_OFFSET: Final = 56
REASON_MAX: Final = 400
_CAP_OFFSET: Final = 456  # after the reason
_SEM_OFFSET: Final = 464  # a glibc sem_t (32 bytes on 64-bit Linux, 8-byte aligned)
_SEM_SIZE: Final = 32
_SLOTS_OFFSET: Final = 512
_SLOT = struct.Struct("=QQQQQ")  # pid, open, accepted, refused, cut
SLOT_SIZE: Final = 64
MAX_WORKERS: Final = (SIZE - _SLOTS_OFFSET) // SLOT_SIZE
assert _REASON_OFFSET + REASON_MAX <= _CAP_OFFSET and _SEM_OFFSET + _SEM_SIZE <= _SLOTS_OFFSET

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.sem_init.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint]
_LIBC.sem_post.argtypes = [ctypes.c_void_p]
_LIBC.sem_trywait.argtypes = [ctypes.c_void_p]
_LIBC.sem_getvalue.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]


def fence_word(deadline: float, epoch: int) -> int:
    """Pack a monotonic deadline (seconds) and an epoch; a deadline of 0 or less means blocked."""
    deadline_us = int(deadline * 1_000_000) if deadline > 0 else 0
    if deadline_us > MAX_DEADLINE_US:
        raise ValueError(f"deadline too far in the future: {deadline}")
    return (deadline_us << EPOCH_BITS) | (epoch & EPOCH_MASK)


def fence_deadline(word: int) -> float:
    """A fence word's deadline (monotonic seconds; 0.0 when blocked), rounded towards zero by one
    ulp so that ``now < fence_deadline(word)`` is never looser than the exact microsecond test.

    The one formula for every reader: the agent's status, the HTTP role answers and the gate
    workers' data path. A float is what the data path wants: comparing two floats is several times
    cheaper in CPython than comparing a float with a 50-bit int (measured), and it does so twice
    per query."""
    deadline_us = word >> EPOCH_BITS
    return math.nextafter(deadline_us / 1_000_000, 0.0) if deadline_us else 0.0


@dataclass(frozen=True)
class StatusRecord:
    state: int
    epoch: int
    drain_until: float
    deadline: float
    reason: str


@dataclass(frozen=True)
class WorkerSlot:
    pid: int
    open_connections: int
    accepted: int
    refused: int
    cut: int


class SharedRecord:
    """A view of the shared page; the agent writes the fence and status, each worker its own slot."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.words = memoryview(self._map).cast("Q")
        self._view = memoryview(self._map)
        self._sem_buffer: ctypes.Array[ctypes.c_char] | None = (ctypes.c_char * _SEM_SIZE).from_buffer(
            self._map, _SEM_OFFSET)
        self._sem = ctypes.addressof(self._sem_buffer)
        self._value = ctypes.c_int(0)

    @classmethod
    def create(cls) -> SharedRecord:
        fd = os.memfd_create("dbfence-gate", os.MFD_CLOEXEC)
        os.ftruncate(fd, SIZE)
        record = cls(fd)
        if _LIBC.sem_init(record._sem, 1, 0) != 0:  # shared between processes, no slot held
            error = ctypes.get_errno()
            record.close()
            raise OSError(error, "sem_init failed")
        return record

    def close(self) -> None:
        self._sem_buffer = None  # the ctypes view pins the map: let it go first
        self.words.release()
        self._view.release()
        self._map.close()
        os.close(self.fd)

    # --- the backend cap ------------------------------------------------------------------------
    def write_backend_cap(self, cap: int) -> None:
        """The agent: how many backend connections the workers may hold together (0: none)."""
        self.words[_CAP_OFFSET // 8] = max(0, cap)

    def backend_cap(self) -> int:
        return int(self.words[_CAP_OFFSET // 8])

    def take_backend_slot(self) -> bool:
        """A worker, before it opens a backend connection: True if a slot under the cap is now
        held (give it back with :meth:`release_backend_slot`), False if the cap is reached."""
        if _LIBC.sem_post(self._sem) != 0:  # the count is at SEM_VALUE_MAX: surely over the cap
            return False
        if self.backend_slots_held() <= self.backend_cap():
            return True
        self.release_backend_slot()
        return False

    def release_backend_slot(self) -> None:
        # Never blocks: the caller holds a slot, so the count is at least one.
        if _LIBC.sem_trywait(self._sem) != 0:
            raise OSError(ctypes.get_errno(), "release of a backend slot nobody held")

    def backend_slots_held(self) -> int:
        """Backend connections held by every worker together (slots taken, not yet given back)."""
        _LIBC.sem_getvalue(self._sem, ctypes.byref(self._value))
        return self._value.value

    # --- agent side -------------------------------------------------------------------------
    def write_fence(self, word: int) -> None:
        self.words[0] = word

    def write_status(self, state: int, epoch: int, drain_until: float, deadline: float, reason: str) -> None:
        encoded = reason.encode("utf-8", "replace")[:REASON_MAX]
        words = self.words
        words[1] += 1  # odd: write in progress
        _STATUS.pack_into(self._view, _STATUS_OFFSET, state, epoch, drain_until, deadline)
        words[_REASON_LEN_OFFSET // 8] = len(encoded)
        self._view[_REASON_OFFSET : _REASON_OFFSET + len(encoded)] = encoded
        words[1] += 1  # even again: consistent

    # --- reader side ------------------------------------------------------------------------
    def fence(self) -> int:
        return int(self.words[0])

    def state_word(self) -> int:
        return int(self.words[_STATUS_OFFSET // 8])

    def admits_at(self, now: float) -> bool:
        """Would a new client be admitted at monotonic ``now``? The workers' own test: ``now``
        before the fence word's deadline, and not draining."""
        return now < fence_deadline(self.fence()) and self.state_word() == STATE_ADMITTING

    def admits_now(self) -> bool:
        """:meth:`admits_at` with the clock read *after* the words, so that a deadline passing
        meanwhile is never missed. Lock-free: answers about this node's role are computed from
        it when they are given, even while the agent loop is busy or has only just resumed from
        a pause that outlived the lease."""
        word, state = self.fence(), self.state_word()
        return time.monotonic() < fence_deadline(word) and state == STATE_ADMITTING

    def read_status(self) -> StatusRecord:
        words = self.words
        while True:
            before = words[1]
            if before & 1:
                os.sched_yield()  # the agent is mid-write; it holds no lock, so this is brief
                continue
            state, epoch, drain_until, deadline = _STATUS.unpack_from(self._view, _STATUS_OFFSET)
            length = min(int(words[_REASON_LEN_OFFSET // 8]), REASON_MAX)
            reason = bytes(self._view[_REASON_OFFSET : _REASON_OFFSET + length])
            if words[1] == before:
                return StatusRecord(state, epoch, drain_until, deadline, reason.decode("utf-8", "replace"))

    # --- worker slots -----------------------------------------------------------------------
    def write_slot(self, index: int, slot: WorkerSlot) -> None:
        _SLOT.pack_into(
            self._view,
            _SLOTS_OFFSET + index * SLOT_SIZE,
            slot.pid,
            slot.open_connections,
            slot.accepted,
            slot.refused,
            slot.cut,
        )

    def set_open_count(self, index: int, count: int) -> None:
        self.words[(_SLOTS_OFFSET + index * SLOT_SIZE) // 8 + 1] = count

    def open_total(self, workers: int) -> int:
        words = self.words
        base = _SLOTS_OFFSET // 8
        step = SLOT_SIZE // 8
        return sum(int(words[base + i * step + 1]) for i in range(workers))

    def open_counts(self, workers: int) -> list[int]:
        words = self.words
        base = _SLOTS_OFFSET // 8
        step = SLOT_SIZE // 8
        return [int(words[base + i * step + 1]) for i in range(workers)]

    def read_slot(self, index: int) -> WorkerSlot:
        return WorkerSlot(*_SLOT.unpack_from(self._view, _SLOTS_OFFSET + index * SLOT_SIZE))

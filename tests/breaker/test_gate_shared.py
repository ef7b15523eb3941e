"""The shared record: the fence word and the seqlocked status."""

from __future__ import annotations

import time
from collections.abc import Iterator
from fractions import Fraction

import pytest

from dbfence.breaker.shared import (
    EPOCH_BITS,
    EPOCH_MASK,
    STATE_ADMITTING,
    SharedRecord,
    WorkerSlot,
    fence_deadline,
    fence_word,
)
from dbfence.breaker.worker import fence_allows


@pytest.fixture
def record() -> Iterator[SharedRecord]:
    shared = SharedRecord.create()
    try:
        yield shared
    finally:
        shared.close()


def test_fence_word_packs_deadline_rounded_down_and_epoch() -> None:
    word = fence_word(12.3456789, 5)
    assert word & EPOCH_MASK == 5
    assert word >> EPOCH_BITS == 12345678


def test_fence_allows_only_same_epoch_before_the_deadline() -> None:
    now = time.monotonic()
    word = fence_word(now + 1, 7)
    assert fence_allows(word, 7, now)
    assert not fence_allows(word, 6, now)
    assert not fence_allows(word, 7, now + 1)
    assert not fence_allows(fence_word(0.0, 7), 7, now)


@pytest.mark.parametrize(
    "deadline_us", [1, 999_999, 1_000_000, 8_164_123_456, 31_536_000_123_457, (1 << 50) - 1]
)
def test_float_deadline_is_never_later_than_the_words_microsecond(deadline_us: int) -> None:
    # The data path compares floats; no "now" may pass that the exact microsecond rule refuses.
    exact_us = Fraction(fence_deadline((deadline_us << EPOCH_BITS) | 3)) * 1_000_000
    assert exact_us <= deadline_us
    assert deadline_us - exact_us < 1  # and less than a microsecond earlier
    assert fence_deadline(3) == 0.0  # blocked: nothing is before it


def test_epoch_wraps_within_its_bits() -> None:
    assert fence_word(1.0, EPOCH_MASK + 3) & EPOCH_MASK == 2


def test_status_round_trip_through_a_second_mapping(record: SharedRecord) -> None:
    record.write_status(STATE_ADMITTING, 42, 0.0, 99.5, "réason")
    other = SharedRecord(record.fd)  # a second view of the same memory, as a worker has
    status = other.read_status()
    assert (status.state, status.epoch, status.deadline) == (STATE_ADMITTING, 42, 99.5)
    assert status.reason == "réason"
    record.write_fence(fence_word(50.0, 3))
    assert other.fence() == fence_word(50.0, 3)


def test_worker_slots_sum_open_connections(record: SharedRecord) -> None:
    record.write_slot(0, WorkerSlot(1, 3, 10, 1, 0))
    record.write_slot(1, WorkerSlot(2, 4, 10, 1, 0))
    record.set_open_count(1, 5)
    assert record.open_total(2) == 8
    assert record.read_slot(1) == WorkerSlot(2, 5, 10, 1, 0)

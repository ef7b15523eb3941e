"""The ERR packet, the command counter and the reply-end reader, on bytes alone."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbfence.breaker.kernel import TAIL_SIZE
from dbfence.breaker.packets import (
    CommandCounter,
    ReplyEnd,
    ends_login,
    handshake_error_packet,
    not_primary_message,
    reply_end,
    reply_end_of_tail,
)


def packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def test_handshake_error_packet_layout() -> None:
    data = handshake_error_packet(1290, not_primary_message("lease expired"))
    message = b"dbfence: this node is not the primary (lease expired)"
    assert data == packet(0, b"\xff" + (1290).to_bytes(2, "little") + message)


def test_a_message_starting_with_hash_is_not_read_as_an_sql_state() -> None:
    assert handshake_error_packet(1040, "#HY000 x")[7:8] == b" "


def test_error_code_out_of_range() -> None:
    with pytest.raises(ValueError):
        handshake_error_packet(70000, "x")


LOGIN = packet(1, b"\x00" * 60)
COMMANDS = [packet(0, b"\x03SELECT 1"), packet(0, b"\x0e"), packet(0, b"\x03" + b"x" * 300)]


@given(st.lists(st.integers(0, 400), max_size=8))
def test_command_counter_is_independent_of_how_the_stream_is_chunked(cuts: list[int]) -> None:
    stream = LOGIN + b"".join(COMMANDS) + packet(0, b"\x01")
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    counter = CommandCounter()
    for start, end in itertools.pairwise(points):
        counter.feed(stream[start:end])
    assert counter.commands == 4
    assert not counter.opaque


def test_ssl_request_makes_the_stream_opaque() -> None:
    counter = CommandCounter()
    counter.feed(packet(1, b"\x00" * 32) + b"\x16\x03\x01\x00\x00garbage")
    counter.feed(packet(0, b"\x03SELECT 1"))
    assert counter.opaque and counter.commands == 0


def ok(status: int) -> bytes:
    return packet(1, b"\x00\x00\x00" + status.to_bytes(2, "little") + b"\x00\x00")


def test_reply_end_reads_the_transaction_flag_of_an_ok() -> None:
    assert reply_end(ok(0x0002)) == ReplyEnd(terminal=True, in_transaction=False)
    assert reply_end(ok(0x0003)) == ReplyEnd(terminal=True, in_transaction=True)


def test_reply_end_of_a_result_set_ends_with_its_eof() -> None:
    rows = packet(1, b"\x01") + packet(2, b"\x03def") + packet(3, b"\xfe\x00\x00\x02\x00")
    rows += packet(4, b"\x011") + packet(5, b"\xfe\x00\x00\x03\x00")
    assert reply_end(rows) == ReplyEnd(terminal=True, in_transaction=True)


def test_reply_end_more_results_is_not_terminal() -> None:
    assert reply_end(ok(0x000A)) == ReplyEnd(terminal=False, in_transaction=False)


def test_reply_end_of_a_chunk_that_does_not_parse_is_unknown() -> None:
    assert reply_end(ok(2)[:-1]) is None
    assert reply_end(b"") is None


def test_reply_end_of_an_err_packet_knows_no_transaction_state() -> None:
    assert reply_end(packet(1, b"\xff\x28\x04#42000oops")) == ReplyEnd(terminal=True, in_transaction=None)


GREETING = packet(0, b"\x0a" + b"10.11.6-MariaDB\x00" + b"\x00" * 40)


@pytest.mark.parametrize(
    ("chunk", "ends"),
    [
        (GREETING, False),
        (packet(2, b"\xfemysql_native_password\x00" + b"s" * 20), False),  # auth switch request
        (packet(2, b"\x01\x03"), False),  # more auth data (fast auth)
        (packet(2, b"\xff\x15\x04#28000Access denied"), False),  # failed login
        (ok(0x0002), True),
        (packet(2, b"\x01\x03") + ok(0x0002), True),  # fast auth and the OK in one chunk
        (ok(0x0002)[:-1], False),  # cut short: keep watching
    ],
    ids=["greeting", "auth-switch", "more-data", "err", "ok", "more-data-then-ok", "partial"],
)
def test_ends_login_recognises_only_the_final_ok(chunk: bytes, ends: bool) -> None:
    assert ends_login(chunk) is ends


def test_reply_end_of_a_short_tail_is_exact() -> None:
    assert reply_end_of_tail(ok(0x0003), complete=True) == ReplyEnd(terminal=True, in_transaction=True)


def test_reply_end_of_a_tail_finds_the_last_packet_of_a_long_result() -> None:
    rows = b"".join(packet(2 + i, b"\x05" + bytes([65 + i % 26]) * 5) for i in range(40))
    chunk = packet(1, b"\x01") + rows + packet(42, b"\xfe\x00\x00\x03\x00\x00\x00")
    assert reply_end_of_tail(chunk[-TAIL_SIZE:], complete=False) == reply_end(chunk)


def test_reply_end_of_a_tail_whose_last_packet_is_longer_than_the_tail_is_unknown() -> None:
    chunk = packet(1, b"\x00\x00\x00\x02\x00\x00\x00" + b"i" * 100)  # an OK with a long info text
    assert reply_end_of_tail(chunk[-TAIL_SIZE:], complete=False) is None


@given(
    st.lists(st.binary(min_size=1, max_size=90), max_size=8),
    st.sampled_from([ok(0x0002), ok(0x0003), ok(0x000A), packet(9, b"\xfe\x00\x00\x03\x00"),
                     packet(9, b"\xff\x28\x04#42000oops")]),
)
def test_a_tail_never_contradicts_the_whole_chunk(bodies: list[bytes], last: bytes) -> None:
    # Whatever came before it, a last packet that fits in the tail is read right or not at all:
    # a wrong "not in a transaction" could let a drain close a link mid-transaction.
    chunk = b"".join(packet(1 + i, body) for i, body in enumerate(bodies)) + last
    answer = reply_end_of_tail(chunk[-TAIL_SIZE:], complete=len(chunk) <= TAIL_SIZE)
    assert answer is None or answer == reply_end(chunk)
